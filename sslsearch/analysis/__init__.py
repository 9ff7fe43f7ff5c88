"""Analysis: reading the records into decisions. leaderboard (ranking, statistics, verdict),
report (one HTML page), export (the winning backbone and its card). Never imports Ray."""
