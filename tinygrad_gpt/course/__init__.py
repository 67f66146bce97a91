"""The checks and worked answers of the notebook course, docs/notebooks/ (one module per
notebook): a notebook's exercise cell holds the learner's attempt, and the cell after it
calls a check here, which prints "not answered yet" for the placeholder, raises
AssertionError naming what is wrong, or says "correct". Each module lists its exercises in
CHECKS = [(check, worked_answer, [wrong answers]), ...] (tests/test_course.py runs them).

    tensor_and_backward   01_tensor_and_backward.ipynb
    bigram_and_softmax    02_bigram_and_softmax.ipynb
    attention             03_attention.ipynb
    gpt_blocks            04_gpt_block_by_block.ipynb
    bpe                   05_tokenizer.ipynb
    finetuning            06_finetuning.ipynb
"""
MODULES = ("tensor_and_backward", "bigram_and_softmax", "attention", "gpt_blocks", "bpe",
           "finetuning")
NOTEBOOKS = ("01_tensor_and_backward.ipynb", "02_bigram_and_softmax.ipynb",
             "03_attention.ipynb", "04_gpt_block_by_block.ipynb", "05_tokenizer.ipynb",
             "06_finetuning.ipynb")


def not_answered(number, hint):
    """What a check says of the placeholder a learner starts from: one line, False."""
    print(f"Exercise {number}: not answered yet ({hint})")
    return False


def correct(number, detail=""):
    """What a check says of a right answer: one line, True."""
    print(f"Exercise {number}: correct" + (f" ({detail})" if detail else ""))
    return True
