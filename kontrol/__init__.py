"""The `kontrol` command and the tooling that does not ship in the serving image.

`core` is the engine (no Telegram), `bot` the Telegram bot on top of it; this package sits above
both: the command line that joins them, the demo-collection builder (`kontrol.demo`) and the
evaluation (`kontrol.evaluation`). A serving image needs only `core` and `bot`.
"""
