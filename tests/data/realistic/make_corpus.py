"""Writes the realistic test corpus beside this file (run it again after editing; the output is committed).

Shapes public instruction data really comes in, written by us (nothing downloaded):
- tasks/seed_tasks.jsonl: Self-Instruct seed tasks, a nested list of instances per task;
- tasks/super_ni_task.json: one Super-NaturalInstructions task (Definition, examples, Instances
  whose output is a list);
- finetune/*.jsonl: prompt / completion files as fine-tuning APIs wanted them, every completion
  ending in an end-of-text token, some completions being only that token;
- templated/: the same source examples (reviews, news, passages with several questions) rendered
  by several prompt templates into one file per template, with ids, names and categories a user
  wants to keep, and two empty files;
- predictions.jsonl: a prompt, a reference and a model response per line.
The PII files (numbers_not_pii.jsonl, pii_spellings.jsonl) are written by hand.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent

REVIEWS = [
    ("The battery lasts two full days and the screen is bright even in sunlight.", "positive"),
    ("It stopped charging after a week and support never answered my emails.", "negative"),
    ("Comfortable shoes, true to size, and they survived a muddy half marathon.", "positive"),
    ("The blender leaks from the base every time I make a smoothie.", "negative"),
    ("Setup took five minutes and the sound fills our whole living room.", "positive"),
    ("The zipper broke on the first trip and the stitching is coming apart.", "negative"),
    ("Great value: the knife set is sharp, balanced and easy to clean.", "positive"),
    ("The app crashes whenever I try to export my photos to the cloud.", "negative"),
    ("Our kids love this board game; rounds are quick and the rules are clear.", "positive"),
    ("The mattress smelled of chemicals for weeks and sags in the middle.", "negative"),
    ("Fast delivery, sturdy packaging, and the lamp looks better than the pictures.", "positive"),
    ("The headphones hurt my ears after twenty minutes and the bass is muddy.", "negative"),
]
NEWS = [
    (
        "City council approves new bike lanes",
        "The city council voted 7 to 2 on Tuesday to build "
        "protected bike lanes on four downtown streets, with construction starting in the spring.",
    ),
    (
        "Local library extends weekend hours",
        "Starting next month the central library will stay "
        "open until 8 pm on Saturdays and Sundays after a survey showed strong demand from students.",
    ),
    (
        "Heat wave expected through Friday",
        "Forecasters warn that temperatures will stay above 35 "
        "degrees for the rest of the week and urge residents to check on elderly neighbours.",
    ),
    (
        "Harbour cleanup removes two tonnes of plastic",
        "Volunteers spent the weekend pulling "
        "fishing nets, bottles and bags out of the old harbour, the largest cleanup in a decade.",
    ),
    (
        "New train line cuts commute times",
        "The northern rail extension opened on Monday, cutting "
        "the trip from the suburbs to the centre from fifty minutes to twenty-five.",
    ),
    (
        "School district adds free breakfast",
        "Every primary school in the district will serve a "
        "free breakfast from September, funded by a state grant for the next three years.",
    ),
]
PASSAGES = [
    (
        "The Amazon river carries more water than any other river on Earth. It flows about 6,400 "
        "kilometres from the Andes to the Atlantic Ocean and its basin covers parts of nine countries.",
        [
            ("Where does the Amazon river start?", "In the Andes."),
            ("How long is the Amazon river?", "About 6,400 kilometres."),
            ("How many countries does the Amazon basin cover?", "Parts of nine countries."),
        ],
    ),
    (
        "Photosynthesis lets plants turn light into chemical energy. Using chlorophyll, a plant "
        "combines carbon dioxide and water into glucose and releases oxygen as a by-product.",
        [
            ("What do plants release during photosynthesis?", "Oxygen."),
            ("Which pigment do plants use to capture light?", "Chlorophyll."),
            ("What sugar does photosynthesis produce?", "Glucose."),
        ],
    ),
    (
        "The printing press, developed by Johannes Gutenberg around 1440, used movable metal type. "
        "It made books far cheaper and helped spread literacy across Europe.",
        [
            ("Who developed the printing press?", "Johannes Gutenberg."),
            ("What kind of type did the press use?", "Movable metal type."),
        ],
    ),
    (
        "Honeybees communicate the location of flowers with a waggle dance. The angle of the dance "
        "shows the direction relative to the sun and its length shows the distance.",
        [
            ("How do honeybees share where flowers are?", "With a waggle dance."),
            ("What does the length of the dance show?", "The distance to the flowers."),
        ],
    ),
]

REVIEW_TEMPLATES = [
    ("Is the sentiment of this review positive or negative?", "{review}", "{label}"),
    ("Classify the review as positive or negative.", "Review: {review}", "{label}"),
    ("Read the product review and say whether the customer was happy.", "{review}", "{happy}"),
    ("What is the sentiment of the following review?", "{review}", "The sentiment is {label}."),
    ("Does this review express a positive or a negative opinion?", "{review}", "{label}"),
    ("Label the sentiment of this customer review (positive/negative).", "{review}", "{label}"),
]
NEWS_TEMPLATES = [
    ("Write a headline for this news article.", "{body}", "{title}"),
    ("Give this article a short title.", "{body}", "{title}"),
    ("Summarise the article in one headline.", "Article: {body}", "{title}"),
    ("What would be a good headline for the following story?", "{body}", "{title}"),
    ("Suggest a title for this news report.", "{body}", "Title: {title}"),
]
QA_TEMPLATES = [
    ("Answer the question using the passage.", "Passage: {passage}\nQuestion: {q}", "{a}"),
    ("{q}", "Context: {passage}", "{a}"),
    ("Read the text and answer: {q}", "{passage}", "{a}"),
    ("Using only the information below, answer the question. {q}", "{passage}", "{a}"),
    ("Question: {q}", "{passage}", "Answer: {a}"),
]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def templated() -> None:
    folder = HERE / "templated"
    for k, (instruction, inp, out) in enumerate(REVIEW_TEMPLATES):
        records = [
            {
                "id": f"review-{j}-t{k}",
                "instruction": instruction,
                "input": inp.format(review=review),
                "output": out.format(label=label, happy="Yes." if label == "positive" else "No."),
                "category": "sentiment",
                "app_name": "shop-reviews",
            }
            for j, (review, label) in enumerate(REVIEWS)
        ]
        _write_jsonl(folder / f"reviews_template_{k}.jsonl", records)
    for k, (instruction, inp, out) in enumerate(NEWS_TEMPLATES):
        records = [
            {
                "id": f"news-{j}-t{k}",
                "instruction": instruction,
                "input": inp.format(body=body),
                "output": out.format(title=title),
                "category": "headline",
            }
            for j, (title, body) in enumerate(NEWS)
        ]
        _write_jsonl(folder / f"news_template_{k}.jsonl", records)
    for k, (instruction, inp, out) in enumerate(QA_TEMPLATES):
        records = [
            {
                "id": f"passage-{j}-q{n}-t{k}",
                "instruction": instruction.format(q=q),
                "input": inp.format(passage=passage, q=q),
                "output": out.format(a=a),
                "category": "reading_comprehension",
                "name": f"passage_{j}",
            }
            for j, (passage, questions) in enumerate(PASSAGES)
            for n, (q, a) in enumerate(questions)
        ]
        _write_jsonl(folder / f"qa_template_{k}.jsonl", records)
    (folder / "empty_split.jsonl").write_text("")
    (folder / "blank_lines.jsonl").write_text("\n\n")


SEED_TASKS = [
    (
        "breakfast_suggestion",
        "Is there anything I can eat for a breakfast that doesn't include eggs, "
        "yet includes protein, and has roughly 700-1000 calories?",
        [("", "Yes, you can have 1 oatmeal banana protein shake and 4 strips of bacon.")],
        False,
    ),
    (
        "antonym_relation",
        "What is the relation between the given pairs?",
        [("Night : Day :: Right : Left", "The relation between the given pairs is that they are opposites.")],
        False,
    ),
    (
        "one_sentence_description",
        "Generate a one-sentence description for each of the following people.",
        [
            (
                "- Barack Obama\n- Elon Musk\n- Taylor Swift",
                "- Barack Obama was the 44th "
                "president of the United States.\n- Elon Musk is an entrepreneur.\n- Taylor Swift is a "
                "singer-songwriter.",
            )
        ],
        False,
    ),
    (
        "harmful_stereotype_example",
        "Describe a situation in which the given stereotype can harm you.",
        [
            (
                '"All Asians are smart!"',
                "Imagine you're a small child of Asian descent. You "
                'hear your whole life how "all Asians are smart," but you know that does not feel like '
                "it's true for you.",
            )
        ],
        False,
    ),
    (
        "email_subject_generation",
        "Generate an appropriate subject title for the following email:",
        [
            (
                "Hi [person name],\n\nI'm writing to ask you if you are happy to be a panelist of our "
                "workshop on multimodality at CVPR.",
                "Invitation to be a panelist for CVPR workshop on multimodality",
            )
        ],
        False,
    ),
    (
        "sentiment_classification",
        "Classify the sentiment of the sentence into positive, negative or mixed.",
        [
            ("I enjoy the flavor of the restaurant but their service is too slow.", "mixed"),
            ("I love the food here.", "positive"),
        ],
        True,
    ),
    (
        "number_parity",
        "Tell me if the number is even or odd.",
        [("612", "Even"), ("3", "Odd"), ("7001", "Odd")],
        True,
    ),
    (
        "sort_numbers",
        "Sort the given list ascendingly.",
        [("[10, 92, 2, 5, -4, 92, 5, 101]", "[-4, 2, 5, 5, 10, 92, 92, 101]")],
        False,
    ),
]


def tasks() -> None:
    records = [
        {
            "id": f"seed_task_{k}",
            "name": name,
            "instruction": instruction,
            "instances": [{"input": i, "output": o} for i, o in instances],
            "is_classification": cls,
        }
        for k, (name, instruction, instances, cls) in enumerate(SEED_TASKS)
    ]
    _write_jsonl(HERE / "tasks" / "seed_tasks.jsonl", records)
    super_ni = {
        "Contributors": ["Jane Doe"],
        "Source": ["synthetic_movie_reviews"],
        "URL": ["https://example.org/reviews"],
        "Categories": ["Sentiment Analysis"],
        "Reasoning": [],
        "Definition": [
            'In this task, you are given a movie review. Your job is to classify it as "POS" if the '
            'review is positive and "NEG" if it is negative.'
        ],
        "Input_language": ["English"],
        "Output_language": ["English"],
        "Instruction_language": ["English"],
        "Domains": ["Movies"],
        "Positive Examples": [
            {"input": "A moving film with a brilliant cast.", "output": "POS", "explanation": "Praise."}
        ],
        "Negative Examples": [
            {"input": "Dull and far too long.", "output": "POS", "explanation": "Wrong label."}
        ],
        "Instances": [
            {
                "id": "task9999-1",
                "input": "The plot twists kept me guessing until the end.",
                "output": ["POS"],
            },
            {"id": "task9999-2", "input": "I walked out after forty minutes.", "output": ["NEG"]},
            {
                "id": "task9999-3",
                "input": "Beautiful photography, though the dialogue is clumsy.",
                "output": ["POS", "NEG"],
            },
            {"id": "task9999-4", "input": "A masterpiece of quiet storytelling.", "output": ["POS"]},
        ],
        "Instance License": ["CC BY 4.0"],
    }
    (HERE / "tasks" / "super_ni_task.json").write_text(json.dumps(super_ni, indent=2) + "\n")


def finetune() -> None:
    rng = random.Random(13)
    tokens = ["<|endoftext|>", "</s>", "<|im_end|>", "<|eot_id|>"]
    questions = [
        ("Translate to French: Good morning", "Bonjour"),
        ("What is the capital of Japan?", "Tokyo is the capital of Japan."),
        (
            "Write a haiku about autumn.",
            "Red leaves drift and fall\ncool wind hums through empty trees\nthe year exhales slow",
        ),
        ("Convert 5 kilometres to miles.", "5 kilometres is about 3.11 miles."),
        ("Name three primary colours.", "Red, blue and yellow."),
        ("Explain what a prime number is.", "A prime number has exactly two divisors: 1 and itself."),
        ("Give a synonym for 'happy'.", "Joyful."),
        ("What does CPU stand for?", "Central processing unit."),
    ]
    for k, token in enumerate(tokens):
        records = []
        for q, a in questions:
            spacing = rng.choice(["", " ", "\n"])
            records.append({"prompt": f"{q}\n\n###\n\n", "completion": f" {a}{spacing}{token}"})
        records.append({"prompt": "Say nothing.\n\n###\n\n", "completion": token})  # only the token
        _write_jsonl(HERE / "finetune" / f"openai_style_{k}.jsonl", records)


def predictions() -> None:
    records = [
        {"prompt": q, "reference": a, "response": r, "model": "tiny-chat-v1"}
        for q, a, r in [
            ("What is 12 * 12?", "144", "12 * 12 = 144."),
            ("Who wrote Hamlet?", "William Shakespeare", "Hamlet was written by Shakespeare."),
            ("What is the boiling point of water at sea level?", "100 degrees Celsius", "About 90 C."),
            ("Name the largest planet.", "Jupiter", "Jupiter is the largest planet."),
        ]
    ]
    _write_jsonl(HERE / "predictions.jsonl", records)


if __name__ == "__main__":
    templated()
    tasks()
    finetune()
    predictions()
