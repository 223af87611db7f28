"""Demo and test tooling, kept apart from the product (`longalign/`): offline stand-ins for what a user brings.

    synthetic       a tokenizer, tiny random models and LongAlign-shaped chat data, made here (tests, benchmarks)
    demo_data       the quickstart's data for a real model: standard-library English with look-alike facts
    synthetic_eval  LongBench-Chat-shaped cases in the published file layout
    rubric_judge    an offline judge (token F1 against the reference answer; NOT GPT-4) for the quickstart
    fault_server    a local OpenAI-compatible server that misbehaves on purpose (tests of the judge client)
    needle_check    an independent check of the Needle test's placement, for any tokenizer
"""
