"""Serial protocol to station microcontroller boards (sans-I/O codec and transport)."""
