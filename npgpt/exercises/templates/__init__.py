"""The exercise files `npgpt exercise init DIR` copies out: each has its
forward written and its backward left to the learner.  Not meant to be
imported from here (their backwards raise NotImplementedError)."""
