"""The CLIP paper's analyses as tools: prompt ablation, typographic attacks, and more (issue 25)."""
