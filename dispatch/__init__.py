"""The dispatch side: what runs at the dispatch centre, never on a station.

`dispatch.console` is the dispatcher's terminal console (`stationgw dispatch ...`). It shares
only the contract with the station gateway: docs/asyncapi.yaml and the models in
`gateway.contract` and `gateway.commands` it is generated from.
"""
