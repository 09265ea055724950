"""PeSIT E: a sans-IO core (codec, machine), the asyncio requester, the CFT adapter."""
