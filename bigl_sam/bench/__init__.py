"""`bigl-sam bench` (command in `cli`): which inputs (`inputs`), which encoders (`encoders`, `peers`), how
they are timed (`measure`), the demo-click line (`clicks`) and the table (`report`)."""
