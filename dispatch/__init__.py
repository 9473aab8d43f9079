"""The dispatch side: what runs at the dispatch centre, never on a station.

`dispatch.inbound` checks every message from a station before anything here believes it
(identity from the topic, strict JSON, the contract's schema). `dispatch.console` is the
dispatcher's terminal console (`stationgw dispatch ...`). It shares
only the contract with the station gateway: docs/asyncapi.yaml and the models in
`gateway.contract.asyncapi` and `gateway.core.commands` it is generated from.
"""
