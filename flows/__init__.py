"""What: raccord's domain, pure and synchronous.

Interface codes, format recognition, invoice facts, remote naming. No sockets, no asyncio, no
clock reads: callers hand in bytes, paths and times.
"""
