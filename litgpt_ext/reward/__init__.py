"""Using a trained outcome reward model: batched scoring (``orm_score``) and best-of-N reranking (``orm_rerank``)."""
