"""Generate datasets/caption_corpus.txt: caption-like English lines for second-moment statistics.

The lines are built from sentence templates and word lists written for this project, drawn with a
seeded RNG and deduplicated, so running the script again gives the same file byte for byte.

    python scripts/make_caption_corpus.py [--lines 5000] [--seed 0] [--out datasets/caption_corpus.txt]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

PEOPLE = [
    "a young woman", "an old man", "a little girl", "a small boy", "a teenager", "a grandmother",
    "a firefighter", "a chef", "a ballerina", "a surfer", "a farmer", "a nurse", "a street musician",
    "a businessman", "a police officer", "a painter", "a fisherman", "a mountain climber", "a student",
    "a bride", "a soldier", "a scientist", "a baker", "a skateboarder", "a jazz singer", "a monk",
    "a tourist", "a mechanic", "a gardener", "a librarian", "an astronaut", "a cowboy", "a knight",
    "a queen", "a king", "a pirate", "a wizard", "a doctor", "a teacher", "a pilot", "two friends",
    "a family of four", "a group of children", "a couple", "a crowd of fans", "a marathon runner",
    "a tennis player", "a football team", "a woman named Zoë", "a man named José", "Chloé",
    "Søren", "a girl called Ngozi", "a boy called Mateus", "a carpenter", "a potter", "a DJ",
]
PEOPLE_ACTIONS = [
    "reading a book", "riding a bicycle", "playing the violin", "drinking coffee", "laughing",
    "walking a dog", "holding an umbrella", "eating an apple", "taking a photo", "dancing",
    "looking out of a window", "sitting on a bench", "carrying groceries", "painting a mural",
    "waiting for a bus", "flying a kite", "cooking dinner", "writing a letter", "playing chess",
    "jumping over a puddle", "talking on the phone", "wearing sunglasses", "giving a speech",
    "playing guitar", "feeding pigeons", "hiking up a trail", "sleeping in a hammock",
    "wearing a red scarf", "smiling at the camera", "throwing a frisbee", "building a sandcastle",
    "waving", "singing into a microphone", "repairing a car", "planting tomatoes",
]
ANIMALS = [
    "a golden retriever", "a tabby cat", "a red fox", "an owl", "a horse", "a brown bear",
    "a polar bear", "an elephant", "a giraffe", "a zebra", "a penguin", "a parrot", "a rabbit",
    "a hedgehog", "a squirrel", "a deer", "a wolf", "a lion", "a tiger", "a cow", "a sheep",
    "a goat", "a duck", "a swan", "a frog", "a turtle", "a dolphin", "a whale", "a koala",
    "a kangaroo", "a panda", "a raccoon", "a hummingbird", "a butterfly", "a puppy", "a kitten",
    "a black cat", "a pony", "a camel", "a flamingo", "a crab", "an octopus", "a goldfish",
]
ANIMAL_ACTIONS = [
    "sleeping", "running", "sitting", "playing", "eating", "drinking water", "looking at the camera",
    "lying in the grass", "swimming", "jumping", "hiding behind a tree", "standing on a rock",
    "curled up on a blanket", "chasing a ball", "yawning", "resting in the shade", "walking",
]
OBJECTS = [
    "a vintage bicycle", "a red umbrella", "a bowl of ramen", "a wooden chair", "a stack of books",
    "a cup of tea", "a bowl of fruit", "a vase of sunflowers", "an old typewriter", "a pair of boots",
    "a birthday cake", "a teapot", "a lighthouse", "a sailboat", "a vintage car", "a red bus",
    "a yellow taxi", "a steam train", "a hot air balloon", "a wooden bridge", "a castle",
    "a windmill", "a clock tower", "a street lamp", "a mailbox", "a piano", "a guitar",
    "a basket of apples", "a plate of pasta", "a slice of pizza", "a burger and fries",
    "a glass of orange juice", "a bouquet of roses", "a laptop", "a camera", "a globe",
    "a chess board", "a candle", "a backpack", "a wristwatch", "a pair of glasses", "a banana",
    "a croissant", "a loaf of bread", "a motorcycle", "a tractor", "a fountain", "a treehouse",
    "a crêpe with strawberries", "a Citroën parked outside", "a plate of crème brûlée",
]
OBJECT_PLACES = [
    "on a kitchen table", "on a windowsill", "on a wooden desk", "in a shop window",
    "leaning against a brick wall", "in an empty room", "on a sandy beach", "on a park bench",
    "in the middle of a field", "next to a river", "on a marble counter", "in a cluttered attic",
    "on a city street", "at the end of a pier", "in front of an old house", "on a picnic blanket",
]
PLACES = [
    "in a busy market", "on a snowy mountain", "at the beach", "in a dense forest", "in a library",
    "in a small café", "on a city street", "in a park", "in a desert", "by a lake", "in a kitchen",
    "on a rooftop", "in a subway station", "in a garden", "on a farm", "in a museum",
    "at a train station", "in a classroom", "on a bridge", "in a field of tulips", "in the rain",
    "in Kyoto", "in São Paulo", "in Zürich", "in Reykjavík", "in Kraków", "in Málaga",
    "in Montréal", "in Düsseldorf", "in Bogotá", "in Malmö", "in Paris", "in New York",
    "in Marrakesh", "in Istanbul", "in Lagos", "in Mumbai", "in Hanoi", "in a mountain village",
    "on a sailing boat", "in a sunflower field", "next to a waterfall", "in an old church",
    "at a night market", "on a frozen lake", "in a bamboo forest", "at a music festival",
]
TIMES = [
    "at sunset", "at sunrise", "at night", "on a rainy morning", "in heavy fog", "under a starry sky",
    "during a snowstorm", "on a sunny afternoon", "at dusk", "in autumn", "in winter", "in spring",
    "on a hot summer day", "under a full moon", "after the rain", "during golden hour",
    "on a cloudy day", "in the early morning light", "during a thunderstorm", "on a windy day",
]
MEDIA = [
    "a photo of", "an oil painting of", "a watercolor painting of", "a pencil sketch of",
    "a charcoal drawing of", "a 35mm photograph of", "a black and white photo of", "a close-up of",
    "a digital illustration of", "a children's book illustration of", "a pixel art image of",
    "a low poly render of", "a linocut print of", "a mosaic of", "a stained glass window showing",
    "a polaroid of", "an anime drawing of", "a comic book panel of", "a 3D render of",
    "a vintage postcard of", "a ukiyo-e print of", "a pastel drawing of", "a blurry photo of",
]
STYLES = [
    "highly detailed", "soft lighting", "dramatic lighting", "cinematic", "minimalist",
    "studio photography", "wide angle", "shallow depth of field", "4k", "8k", "trending on artstation",
    "impressionist style", "art nouveau style", "in the style of a 1970s magazine", "film grain",
    "bright colors", "muted colors", "pastel colors", "high contrast", "long exposure", "bokeh",
    "isometric view", "aerial view", "macro shot", "portrait orientation", "symmetrical composition",
]
COUNTS = ["two", "three", "four", "five", "several", "many", "2", "3", "7", "12", "a dozen"]
PLURALS = [
    "cats", "dogs", "horses", "birds", "children", "balloons", "boats", "apples", "chairs", "books",
    "cups of coffee", "red cars", "penguins", "candles", "sheep", "umbrellas", "bicycles", "lemons",
]
NUMBERED = [
    "a clock showing 10:15", "room 404 of an old hotel", "a bus with the number 42",
    "a 1960s car", "a city skyline in the year 2049", "a birthday cake with 30 candles",
    "a house with the number 221 on the door", "a runner wearing number 7", "a 1920s jazz club",
    "a train leaving platform 9", "a price tag reading 3.99", "a calendar showing May 1st",
]


def caption(rng: random.Random) -> str:
    """One caption from a randomly chosen template."""
    person = f"{rng.choice(PEOPLE)} {rng.choice(PEOPLE_ACTIONS)}"
    animal = f"{rng.choice(ANIMALS)} {rng.choice(ANIMAL_ACTIONS)}"
    thing = f"{rng.choice(OBJECTS)} {rng.choice(OBJECT_PLACES)}"
    subject = rng.choice([person, person, animal, animal, thing])
    templates = [
        lambda: f"{rng.choice(MEDIA)} {subject}",
        lambda: f"{subject} {rng.choice(PLACES)}",
        lambda: f"{subject} {rng.choice(TIMES)}",
        lambda: f"{rng.choice(MEDIA)} {subject} {rng.choice(PLACES)}",
        lambda: f"{subject} {rng.choice(PLACES)} {rng.choice(TIMES)}",
        lambda: f"{subject}, {rng.choice(STYLES)}",
        lambda: f"{rng.choice(MEDIA)} {subject}, {rng.choice(STYLES)}, {rng.choice(STYLES)}",
        lambda: f"{rng.choice(COUNTS)} {rng.choice(PLURALS)} {rng.choice(PLACES)}",
        lambda: f"{rng.choice(MEDIA)} {rng.choice(NUMBERED)}",
        lambda: f"{rng.choice(NUMBERED)} {rng.choice(TIMES)}",
        lambda: f"{subject} {rng.choice(TIMES)}, {rng.choice(STYLES)}",
        lambda: f"{rng.choice(PEOPLE)} and {rng.choice(ANIMALS)} {rng.choice(PLACES)}",
    ]
    text = rng.choice(templates)()
    return text[0].upper() + text[1:]


def make_corpus(n_lines: int = 5000, seed: int = 0) -> list[str]:
    """``n_lines`` distinct captions, deterministic in ``seed``."""
    rng = random.Random(seed)
    seen: set[str] = set()
    lines: list[str] = []
    while len(lines) < n_lines:
        line = caption(rng)
        if line.lower() not in seen:
            seen.add(line.lower())
            lines.append(line)
    rng.shuffle(lines)
    return lines


def main() -> None:
    default_out = Path(__file__).resolve().parents[1] / "datasets" / "caption_corpus.txt"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    lines = make_corpus(args.lines, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} lines to {args.out}")


if __name__ == "__main__":
    main()
