"""SFTP: the sender (asyncssh client)."""
