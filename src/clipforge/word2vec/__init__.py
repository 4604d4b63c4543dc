"""word2vec's skip-gram with negative sampling (Mikolov et al. 2013) on clipforge's contrastive loss."""

from clipforge.word2vec.model import SkipGram
from clipforge.word2vec.trainer import Word2VecConfig, load_word2vec, nearest, train_word2vec
from clipforge.word2vec.vocab import Vocab

__all__ = ["SkipGram", "Vocab", "Word2VecConfig", "load_word2vec", "nearest", "train_word2vec"]
