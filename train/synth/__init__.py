"""Synthetic textbooks, the phi-1.5 report's method: seed topics -> subtopics -> textbook sections and exercises
with solutions from a teacher model, varied by audience and style, then quality gates (length, language
quality, exact and near-duplicate removal, decontamination against evaluation sets). `python -m train.synth`.

    teacher.py   a completion endpoint (OpenAI-compatible HTTP: vLLM's server) or our runtime in process
    prompts.py   topic expansion and the prompt templates (kinds x audiences x styles)
    filters.py   the quality gates, each counting what it removed
    job.py       the resumable generation job: requests, raw records, filtered records, report
"""
