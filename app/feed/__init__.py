"""The source side: feeds, their connections, and what their frames are."""
