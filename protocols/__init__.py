"""How: the sender interface, its errors, and one implementation per transfer protocol."""
