"""Privacy audits (chapter 6): membership inference on classifiers and generators, and differentially private
training as the yardstick.

- :mod:`.membership`: how well an attack's scores tell members (training images) from non-members, as Carlini et
  al. report it (*Membership inference attacks from first principles*, IEEE S&P 2022): the ROC on log-log axes,
  AUC and the true-positive rate at a low false-positive rate (0.1 % and 1 %), each with a bootstrap interval;
  and the checks a member/non-member split must pass before anything is trained.
- :mod:`.attacks`: the attacks, one entry each in ``MEMBERSHIP_ATTACKS`` (loss threshold, LiRA, GAN-Leaks,
  DDPM denoising error); each turns what the attacker observes into one score per image, higher for members.
- :mod:`.dp`: DP-SGD with Opacus and its privacy accounting; :mod:`.outputs`: the logits attackers read;
  :mod:`.audit`: every output attack on the stored models of one data set.
"""

from .attacks import MEMBERSHIP_ATTACKS, MembershipAttack
from .membership import AttackReport, check_membership_split, evaluate_scores, tpr_at_fpr

__all__ = ["MEMBERSHIP_ATTACKS", "AttackReport", "MembershipAttack", "check_membership_split", "evaluate_scores",
           "tpr_at_fpr"]
