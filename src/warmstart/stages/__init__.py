"""One short loop per stage: pretrain (toy stage 0), sft, opd, grpo."""
