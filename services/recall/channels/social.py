"""Social channel: items uploaded or liked by the accounts the user follows, newest first.

Several followees pointing at the same item add up. Without a follow graph (ml-100k) the channel
is unavailable and answers empty: that is a fact about the data, not an error.
"""

from __future__ import annotations

import numpy as np

from services.recall.channels import RecallContext, empty
from services.recall.channels.ranking import best_first, csr_positions, sum_by_item

DAY = 86_400


class SocialChannel:
    name = "social"

    def __init__(self, table: dict[str, np.ndarray], time_scale_s: float = 7 * DAY):
        self.follow_ptr = table["follow_ptr"]
        self.followees = table["followees"]
        self.account_ptr = table["account_ptr"]
        self.account_items = table["account_items"]
        self.account_ts = table["account_ts"]
        self.time_scale_s = time_scale_s
        self.available = len(self.followees) > 0

    def retrieve(self, context: RecallContext, k: int) -> tuple[np.ndarray, np.ndarray]:
        user = context.user_id
        if not self.available or not 0 < user < len(self.follow_ptr) - 1:
            return empty()
        followees = self.followees[self.follow_ptr[user] : self.follow_ptr[user + 1]]
        followees = followees[followees < len(self.account_ptr) - 1]
        _, positions = csr_positions(self.account_ptr, followees)
        ts = self.account_ts[positions]
        visible = ts <= context.request_ts  # never show an upload or like from the future
        age = (context.request_ts - ts[visible]).astype(np.float64)
        items, scores = sum_by_item(
            self.account_items[positions][visible], np.exp(-age / self.time_scale_s)
        )
        return best_first(items, scores, k)
