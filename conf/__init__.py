"""Makes ``conf/`` the package ``sentech_eval.conf`` of the installed wheel (see setup.py).

Hydra reads it as ``pkg://sentech_eval.conf``, which needs a regular package. The YAML files
next to this one are the configuration; nothing here is code.
"""
