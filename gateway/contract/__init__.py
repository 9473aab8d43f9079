"""The contracts, generated from the code's types: the AsyncAPI message contract and the
config reference. The only place pydantic is imported at run time; never the daemon.

`python -m gateway.contract` prints docs/asyncapi.yaml.
"""
