"""The dtype names a config may give, importable without torch: `duet master` and `duet worker`
check their files against it before anything loads torch (seconds on a small host), so a bad
config fails at once. engine/dtypes.py maps each name to its torch dtype."""

DTYPE_CHOICES = ("bfloat16", "float16", "float32")
