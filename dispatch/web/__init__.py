"""The dispatchers' web console (`app.create_app`), served by the hub: `stationgw hub run
--web HOST:PORT`."""
