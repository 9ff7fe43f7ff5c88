"""Records: MLflow. store (where records live), tracking (the driver's Tune callback, the outbox,
sync), ui (MLflow UI and optuna-dashboard servers). Only the driver writes MLflow."""
