"""Stage implementations, one family per module; registered via the ptflow.stages entry points."""
