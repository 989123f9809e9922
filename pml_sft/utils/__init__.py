from .recall_at_k import RecallAtK
