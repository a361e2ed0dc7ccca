"""Social channel: items uploaded or liked by the accounts the user follows, newest first.

Several followees pointing at the same item add up. Follows changed and items uploaded while
serving (the store's living catalogue) count from the next request. Without a follow graph
(ml-100k) the channel answers only from follows made online: a fact about the data, not an error.
"""

from __future__ import annotations

import numpy as np

from services.recall.channels import RecallContext, empty
from services.recall.channels.ranking import best_first, csr_positions, sum_by_item

DAY = 86_400


class SocialChannel:
    name = "social"

    def __init__(self, table: dict[str, np.ndarray], store=None, time_scale_s: float = 7 * DAY):
        self.store = store  # its living catalogue: follow changes and uploads since the bundle
        self.follow_ptr = table["follow_ptr"]
        self.followees = table["followees"]
        self.account_ptr = table["account_ptr"]
        self.account_items = table["account_items"]
        self.account_ts = table["account_ts"]
        # Uploads get increasing ids: the ones up to here were folded into the table already.
        self.covered = int(self.account_items.max(initial=0))
        self.time_scale_s = time_scale_s
        self.available = len(self.followees) > 0

    def retrieve(self, context: RecallContext, k: int) -> tuple[np.ndarray, np.ndarray]:
        user = context.user_id
        if user <= 0:
            return empty()
        followees = np.empty(0, np.int64)
        if self.available and user < len(self.follow_ptr) - 1:
            followees = self.followees[self.follow_ptr[user] : self.follow_ptr[user + 1]]
        live = None if self.store is None else self.store.live
        if live is not None:  # follows and unfollows since the bundle was built
            followed, dropped = live.follow_changes(user)
            followees = np.union1d(np.setdiff1d(followees, dropped), followed)
        if not len(followees):
            return empty()
        known = followees[followees < len(self.account_ptr) - 1]
        _, positions = csr_positions(self.account_ptr, known)
        items, ts = self.account_items[positions], self.account_ts[positions]
        if live is not None:  # uploads since the bundle by the accounts followed
            uploads = live.items
            mine = np.isin(live.accounts(uploads["creator_id"]), followees)
            mine &= uploads["item_id"] > self.covered
            items = np.concatenate([items, uploads["item_id"][mine]])
            ts = np.concatenate([ts, uploads["upload_ts"][mine]])
        visible = ts <= context.request_ts  # never show an upload or like from the future
        age = (context.request_ts - ts[visible]).astype(np.float64)
        items, scores = sum_by_item(items[visible], np.exp(-age / self.time_scale_s))
        return best_first(items, scores, k)
