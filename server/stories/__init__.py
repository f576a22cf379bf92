"""Stories: the domain operations on items, over the store.

Writing (post, share, audience change, delete, expire), reading (tray, a
user's stories, archive, visibility of shares), seen state and viewers, and the
sweeper that ends expired items.
"""
