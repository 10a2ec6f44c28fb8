"""The comparison experiment: tasks, strategies, sandboxed evaluation and reports."""
import re

# what an experiment may be called: it names a folder of reports and a path segment of the API
EXPERIMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
EXPERIMENT_NAME_RULE = "1 to 100 letters, digits and _ . : - (a letter or digit first)"
