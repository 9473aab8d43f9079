"""`python -m gateway.contract > docs/asyncapi.yaml`."""

from gateway.contract.asyncapi import main

main()
