#!/usr/bin/env python3
"""Build the pretraining corpus for the rwkvd demo model (byte-level RWKV-7).

Three sources, written gzip-compressed to tools/pretrain/data/ (git-ignored):

  austen.txt.gz     Jane Austen's six completed novels (public domain; 1811-1818),
                    taken from the Debian package r-cran-janeaustenr (package
                    licence MIT, text public domain) through Rscript. One
                    paragraph per line block, paragraphs separated by a blank line.
                    The held-out passage (see HELDOUT_* below) is removed.
  stories.txt.gz    Simple English stories made by the grammar/template generator
                    below (fixed seed). Stories separated by a blank line.
  chat.txt.gz       Chat-style conversations in the RWKV chat template
                    "User: ...\\n\\nAssistant: ...\\n\\n", made by the generator below.
                    About 12% start with a "System: ..." line; a quarter of those ask
                    for a pirate voice (the style the demo state tune steers to).

It also writes models/heldout.txt (exactly 4096 bytes, ASCII): 2048 bytes of Austen
that are not in the training text, then 2048 bytes of generator output made with a
different seed.

Everything is deterministic: same Debian package + same script = same bytes.
Generated text is a work of this script; it is released with rwkvd under the project
licence and carries no third-party rights.

Usage:  python3 tools/pretrain/make_data.py            (needs Rscript + r-cran-janeaustenr:
        apt-get install r-cran-janeaustenr)
"""
import gzip
import hashlib
import os
import random
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(HERE, "data")

SEED = 20250705
STORIES_BYTES = 18_000_000
CHAT_BYTES = 18_000_000

# The held-out Austen passage: taken from the novel below, starting at paragraph
# number HELDOUT_PARA (0-based, after cleaning); paragraphs from there on are dropped
# from training until HELDOUT_SKIP bytes have been removed.
HELDOUT_BOOK = "Persuasion"
HELDOUT_PARA = 600
HELDOUT_SKIP = 20000

# --------------------------------------------------------------------------
# Austen
# --------------------------------------------------------------------------

R_SCRIPT = r'''
library(janeaustenr)
b <- austen_books()
for (bk in levels(b$book)) {
  cat("@@BOOK ", bk, "\n", sep="")
  t <- b$text[b$book == bk]
  cat(t, sep="\n")
  cat("\n")
}
'''


def clean_austen_line(s):
    s = s.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    s = s.replace("\u2014", "--").replace("\u2013", "-").replace("\u00e9", "e").replace("\u00e8", "e")
    s = s.replace("\u00ea", "e").replace("\u00e0", "a").replace("\u00e2", "a").replace("\u00ef", "i")
    s = s.replace("_", "")  # Gutenberg italics markers
    s = s.encode("ascii", "ignore").decode("ascii")
    return s


def austen_paragraphs():
    out = subprocess.run(["Rscript", "--vanilla", "-e", R_SCRIPT], check=True,
                         capture_output=True).stdout.decode("utf-8")
    books = {}
    cur = None
    for line in out.split("\n"):
        if line.startswith("@@BOOK "):
            cur = line[7:].strip()
            books[cur] = []
            continue
        books[cur].append(clean_austen_line(line.rstrip()))
    result = {}
    for bk, lines in books.items():
        paras, buf = [], []
        for ln in lines + [""]:
            if ln.strip() == "":
                if buf:
                    p = " ".join(x.strip() for x in buf)
                    p = re.sub(r"\s+", " ", p).strip()
                    buf = []
                    # drop chapter headings and volume markers
                    if re.fullmatch(r"(CHAPTER|Chapter|VOLUME|Volume)\s+[IVXLC\d]+\.?", p) or len(p) < 3:
                        continue
                    paras.append(p)
            else:
                buf.append(ln)
        result[bk] = paras
    return result


def build_austen():
    books = austen_paragraphs()
    train_paras, held = [], []
    for bk, paras in books.items():
        skipping, skipped = False, 0
        for i, p in enumerate(paras):
            if bk == HELDOUT_BOOK and i == HELDOUT_PARA:
                skipping = True
            if skipping:
                held.append(p)
                skipped += len(p) + 2
                if skipped >= HELDOUT_SKIP:
                    skipping = False
                continue
            train_paras.append(p)
    if not held:
        sys.exit("held-out start paragraph not found")
    return "\n\n".join(train_paras) + "\n\n", "\n\n".join(held) + "\n\n"


# --------------------------------------------------------------------------
# Generator: words
# --------------------------------------------------------------------------

NAMES = [("Tom", "he"), ("Lily", "she"), ("Sam", "he"), ("Mia", "she"), ("Ben", "he"), ("Anna", "she"),
         ("Max", "he"), ("Lucy", "she"), ("Jack", "he"), ("Emma", "she"), ("Leo", "he"), ("Sara", "she"),
         ("Tim", "he"), ("Zoe", "she"), ("Finn", "he"), ("Ella", "she"), ("Noah", "he"), ("Rosa", "she"),
         ("Oscar", "he"), ("Grace", "she"), ("Hugo", "he"), ("Ivy", "she"), ("Omar", "he"), ("Nina", "she"),
         ("Paul", "he"), ("Kate", "she"), ("Dan", "he"), ("Lena", "she"), ("Alex", "he"), ("Maya", "she"),
         ("Eli", "he"), ("Ruby", "she"), ("Jonas", "he"), ("Clara", "she"), ("Felix", "he"), ("Alice", "she")]

# name, sound, food, home, how it moves, plural
ANIMALS = [
    ("dog", "barks", "meat and bones", "a kennel or a house", "runs", "dogs", "woof"),
    ("cat", "meows", "fish and meat", "a warm house", "walks softly", "cats", "meow"),
    ("cow", "moos", "grass and hay", "a barn on a farm", "walks slowly", "cows", "moo"),
    ("duck", "quacks", "seeds, bugs and plants", "a pond", "swims", "ducks", "quack"),
    ("horse", "neighs", "hay, oats and apples", "a stable", "gallops", "horses", "neigh"),
    ("sheep", "bleats", "grass", "a field on a farm", "walks", "sheep", "baa"),
    ("pig", "oinks", "almost anything, like corn and apples", "a pen on a farm", "trots", "pigs", "oink"),
    ("owl", "hoots", "mice and insects", "a hole in a tree", "flies", "owls", "hoot"),
    ("frog", "croaks", "flies and other insects", "a pond", "hops", "frogs", "ribbit"),
    ("lion", "roars", "meat", "the grasslands of Africa", "runs", "lions", "roar"),
    ("bird", "sings", "seeds and worms", "a nest in a tree", "flies", "birds", "tweet"),
    ("mouse", "squeaks", "seeds, grain and cheese", "a small hole", "scurries", "mice", "squeak"),
    ("bee", "buzzes", "nectar from flowers", "a hive", "flies", "bees", "buzz"),
    ("bear", "growls", "berries, fish and honey", "a cave in the forest", "walks", "bears", "grr"),
    ("rabbit", "is mostly quiet", "carrots, grass and leaves", "a burrow under the ground", "hops", "rabbits", "sniff"),
    ("fox", "yips", "mice, birds and berries", "a den in the woods", "runs", "foxes", "yip"),
    ("goat", "bleats", "grass and leaves", "a farm or a mountain", "climbs", "goats", "meh"),
    ("wolf", "howls", "meat", "a den in the forest", "runs", "wolves", "awoo"),
    ("snake", "hisses", "mice and eggs", "holes and rocks", "slides", "snakes", "hiss"),
    ("elephant", "trumpets", "grass, leaves and fruit", "the forests and plains of Africa and Asia", "walks", "elephants", "toot"),
    ("monkey", "chatters", "fruit and leaves", "the trees of the jungle", "climbs", "monkeys", "ooh ooh"),
    ("squirrel", "chatters", "nuts and seeds", "a nest high in a tree", "climbs", "squirrels", "chit"),
    ("turtle", "is mostly quiet", "plants and small bugs", "ponds and rivers", "crawls", "turtles", "..."),
    ("hen", "clucks", "seeds and grain", "a coop on a farm", "walks", "hens", "cluck"),
]

PLACES = ["park", "forest", "beach", "garden", "farm", "river", "lake", "hill", "town", "school",
          "library", "kitchen", "village", "meadow", "market", "castle", "island", "harbor", "zoo", "field",
          "mountain", "cave", "playground", "bakery", "old house", "city"]

OBJECTS = ["ball", "kite", "hat", "box", "book", "boat", "cake", "apple", "flower", "shell", "key", "map",
           "lamp", "drum", "bell", "blanket", "toy car", "letter", "basket", "umbrella", "coin", "stone",
           "feather", "cup", "ribbon", "sock", "crayon", "rope", "jar", "leaf", "bike", "clock", "spoon",
           "kettle", "pillow", "whistle", "necklace", "picture", "bucket", "shovel"]

ADJ = ["big", "small", "little", "old", "new", "shiny", "red", "blue", "green", "yellow", "soft", "bright",
       "tiny", "round", "heavy", "funny", "strange", "beautiful", "golden", "purple", "white", "brown",
       "dusty", "colorful", "warm", "broken", "pretty", "special", "magic", "secret"]

FEEL = ["happy", "sad", "scared", "excited", "angry", "tired", "surprised", "proud", "lonely", "curious",
        "worried", "glad", "calm", "brave", "shy"]

TIMES = ["One sunny morning", "One day", "On a rainy afternoon", "One cold winter night", "One warm summer day",
         "Early one morning", "Late one evening", "On a windy day", "One bright spring day", "After lunch one day",
         "On the first day of autumn", "One quiet Sunday"]

ACTIVITIES = ["play in the {place}", "read books", "draw pictures", "sing songs", "climb trees", "run fast",
              "help {pos} mom", "bake cookies", "build things with blocks", "look at the stars", "swim in the lake",
              "fly {pos} kite", "dance in the rain", "plant flowers", "ride {pos} bike", "make new friends",
              "explore the {place}", "play with {pos} ball", "watch the birds", "tell jokes"]

MORALS = ["it is good to share", "friends help each other", "being kind makes everyone happy",
          "it is okay to ask for help", "you should always tell the truth", "hard work pays off",
          "it is good to be brave", "listening to others is important", "small things can make a big difference",
          "patience is a good thing", "saying sorry can fix a lot", "everyone is good at something",
          "it is fun to try new things", "you should be careful", "a true friend is a treasure"]

COLORS = {"sky": "blue", "grass": "green", "snow": "white", "sun": "yellow", "banana": "yellow",
          "strawberry": "red", "carrot": "orange", "coal": "black", "milk": "white", "cherry": "red",
          "lemon": "yellow", "leaf": "green", "orange": "orange", "tomato": "red", "cloud": "white",
          "night sky": "dark", "chocolate": "brown", "grape": "purple", "pumpkin": "orange", "sea": "blue",
          "frog": "green", "pig": "pink", "crow": "black", "polar bear": "white", "lime": "green"}

OPPOSITES = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"),
             ("day", "night"), ("open", "closed"), ("wet", "dry"), ("old", "young"), ("light", "dark"),
             ("full", "empty"), ("loud", "quiet"), ("hard", "soft"), ("early", "late"), ("tall", "short"),
             ("in", "out"), ("left", "right"), ("near", "far"), ("strong", "weak"), ("clean", "dirty"),
             ("first", "last"), ("win", "lose"), ("push", "pull"), ("heavy", "light"), ("rich", "poor")]

DEFS = {
    "ball": "A ball is a round toy that you can throw, kick or bounce.",
    "kite": "A kite is a light frame covered with paper or cloth that flies in the wind on a long string.",
    "book": "A book is a set of printed pages held together, with a story or facts to read.",
    "boat": "A boat is a small vessel that floats and carries people or things across water.",
    "key": "A key is a small piece of metal that opens a lock.",
    "map": "A map is a drawing that shows where places are and how to get there.",
    "lamp": "A lamp is a thing that gives light, often with a bulb inside.",
    "clock": "A clock is a machine that shows what time it is.",
    "umbrella": "An umbrella is a folding cover on a stick that keeps the rain off you.",
    "bridge": "A bridge is a road or path built over a river, a road or a valley.",
    "library": "A library is a place where many books are kept for people to read or borrow.",
    "farm": "A farm is land where people grow food and keep animals.",
    "island": "An island is a piece of land with water all around it.",
    "river": "A river is a large stream of water that flows across the land to the sea or a lake.",
    "mountain": "A mountain is a very high hill with steep sides.",
    "forest": "A forest is a large area covered with trees.",
    "desert": "A desert is a dry place where very little rain falls.",
    "planet": "A planet is a large round body in space that moves around a star. The Earth is a planet.",
    "star": "A star is a huge ball of hot gas in space that gives off light. The Sun is a star.",
    "moon": "The Moon is the large round rock that goes around the Earth and shines at night.",
    "rainbow": "A rainbow is an arc of colors in the sky, made when sunlight shines through rain.",
    "cloud": "A cloud is a white or grey mass of tiny water drops floating in the sky.",
    "volcano": "A volcano is a mountain that can throw out hot melted rock, ash and gas.",
    "friend": "A friend is someone you know well and like, who cares about you.",
    "teacher": "A teacher is a person who helps people learn.",
    "doctor": "A doctor is a person who helps sick people get better.",
    "baker": "A baker is a person who makes bread and cakes.",
    "computer": "A computer is a machine that follows instructions to work with numbers, words and pictures.",
    "garden": "A garden is a piece of land where people grow flowers, fruit or vegetables.",
    "nest": "A nest is a home that a bird builds to lay its eggs in.",
    "seed": "A seed is the small part of a plant that can grow into a new plant.",
    "bread": "Bread is a food made from flour, water and yeast, baked in an oven.",
    "castle": "A castle is a big strong building with thick walls, where kings and queens lived long ago.",
    "ship": "A ship is a large boat that carries people or goods across the sea.",
    "pirate": "A pirate is a sailor who robs other ships at sea. Pirates appear in many old stories.",
    "treasure": "Treasure is a store of gold, jewels or other valuable things.",
    "poem": "A poem is a piece of writing with a rhythm, and often with lines that rhyme.",
    "story": "A story is an account of events, real or made up, told to entertain or teach.",
    "question": "A question is something you ask when you want to know something.",
    "word": "A word is a sound or a group of letters that has a meaning.",
}

FACTS = [
    ("How many days are in a week?", "There are seven days in a week."),
    ("How many months are in a year?", "There are twelve months in a year."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many legs does an insect have?", "An insect has six legs."),
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("How many sides does a square have?", "A square has four sides, and they are all the same length."),
    ("How many hours are in a day?", "There are twenty-four hours in a day."),
    ("How many minutes are in an hour?", "There are sixty minutes in an hour."),
    ("What do plants need to grow?", "Plants need water, light from the sun, air and good soil to grow."),
    ("Why is the sky blue?", "The sky looks blue because the air scatters the blue part of sunlight more than the other colors."),
    ("What is the Sun?", "The Sun is a star. It is a huge ball of hot gas that gives the Earth light and heat."),
    ("What is the biggest planet?", "Jupiter is the biggest planet in our solar system."),
    ("What planet do we live on?", "We live on the planet Earth."),
    ("What is ice?", "Ice is frozen water. Water turns into ice when it gets colder than zero degrees Celsius."),
    ("At what temperature does water boil?", "Water boils at one hundred degrees Celsius at sea level."),
    ("Where does rain come from?", "Rain comes from clouds. Tiny drops of water in the clouds join together and fall when they get heavy."),
    ("Why do we need to sleep?", "We need sleep so that our body and our brain can rest and grow strong."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of England?", "The capital of England is London."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the largest ocean?", "The Pacific Ocean is the largest ocean on Earth."),
    ("What do bees make?", "Bees make honey and wax."),
    ("What do cows give us?", "Cows give us milk."),
    ("What do hens give us?", "Hens give us eggs."),
    ("Why do leaves fall in autumn?", "In autumn the days get shorter and colder, so many trees drop their leaves to rest for the winter."),
    ("What is a baby cat called?", "A baby cat is called a kitten."),
    ("What is a baby dog called?", "A baby dog is called a puppy."),
    ("What is a baby cow called?", "A baby cow is called a calf."),
    ("What is a baby sheep called?", "A baby sheep is called a lamb."),
    ("What is a baby horse called?", "A baby horse is called a foal."),
    ("What is a baby frog called?", "A baby frog is called a tadpole."),
    ("Who wrote Pride and Prejudice?", "Pride and Prejudice was written by Jane Austen. It was first published in 1813."),
    ("Who was Jane Austen?", "Jane Austen was an English writer who lived from 1775 to 1817. She wrote six novels, such as Emma and Pride and Prejudice."),
    ("What are the four seasons?", "The four seasons are spring, summer, autumn and winter."),
    ("What are the colors of the rainbow?", "The colors of the rainbow are red, orange, yellow, green, blue, indigo and violet."),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal."),
    ("What is the tallest animal?", "The giraffe is the tallest animal."),
    ("What is the largest animal?", "The blue whale is the largest animal that has ever lived."),
    ("What are you?", "I am a small language model. I was trained on simple stories, conversations and the novels of Jane Austen."),
    ("What is your name?", "I am the rwkvd demo model, a very small RWKV language model."),
    ("Who made you?", "I was trained by the rwkvd project as a small demo model."),
    ("Can you help me?", "Of course. Tell me what you need and I will do my best."),
]

GREET = [("Hello!", "Hello! How can I help you today?"), ("Hi!", "Hi there! What would you like to talk about?"),
         ("Hi, how are you?", "I am fine, thank you. How are you?"), ("Good morning!", "Good morning! I hope you have a lovely day."),
         ("Thank you!", "You are welcome!"), ("Thanks a lot.", "You are very welcome. I am glad I could help."),
         ("Goodbye!", "Goodbye! Have a nice day."), ("Good night.", "Good night! Sleep well."),
         ("Hey.", "Hello! What can I do for you?"), ("I am bored.", "Maybe you could read a book, go for a walk, or draw a picture. Would you like me to tell you a story?"),
         ("I am sad.", "I am sorry that you feel sad. It can help to talk to a friend, go outside, or do something you enjoy."),
         ("Tell me a joke.", None), ("Tell me something funny.", None)]

JOKES = ["Why did the cat sit on the computer? To keep an eye on the mouse!",
         "What do you call a bear with no teeth? A gummy bear!",
         "Why did the cow go to space? To see the moooon!",
         "What do you call a fish with no eyes? A fsh!",
         "Why do bees have sticky hair? Because they use honeycombs!",
         "What did one wall say to the other wall? I will meet you at the corner!",
         "Why was the math book sad? It had too many problems.",
         "What has four legs but cannot walk? A table!",
         "Why did the frog take the bus? His car got toad away!",
         "What do you call a sleeping dinosaur? A dino-snore!"]

TIPS = {
    "sleep better": ["go to bed at the same time every night", "keep your room dark and quiet",
                      "stop using screens an hour before bed", "do not drink coffee late in the day",
                      "read a calm book before you sleep"],
    "study well": ["study a little every day", "take short breaks", "find a quiet place to work",
                   "explain what you learned to a friend", "get enough sleep before a test"],
    "stay healthy": ["eat fruit and vegetables", "drink plenty of water", "move your body every day",
                     "sleep well", "wash your hands often"],
    "make friends": ["smile and say hello", "ask people about themselves", "be kind and helpful",
                     "join a club or a team", "listen more than you talk"],
    "save money": ["make a plan for your money", "buy only what you need", "put a little aside every week",
                   "cook at home", "wait a day before you buy something big"],
    "be happy": ["spend time with people you love", "go outside in the sun", "do something kind for someone",
                 "write down three good things each day", "do things that you enjoy"],
    "keep a garden": ["water your plants in the morning", "pull out the weeds", "give plants enough sun",
                      "use good soil", "plant seeds in spring"],
    "write a story": ["start with a character who wants something", "give the character a problem",
                      "show how the character tries to solve it", "keep the sentences short and clear",
                      "end with a change or a lesson"],
}

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
                "nineteen", "twenty"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


def a_an(word):
    return ("an " if word[0] in "aeiou" else "a ") + word


def cap(s):
    return s[0].upper() + s[1:] if s else s


class Gen:
    def __init__(self, seed):
        self.r = random.Random(seed)

    def c(self, xs):
        return self.r.choice(xs)

    # ------------------------------------------------------------ stories
    def hero(self):
        r = self.r
        if r.random() < 0.6:
            name, pr = self.c(NAMES)
            return dict(name=name, pr=pr, desc=None, animal=None)
        an = self.c(ANIMALS)
        name, pr = self.c(NAMES)
        return dict(name=name, pr=pr, desc=a_an(self.c(ADJ) + " " + an[0]), animal=an)

    def story(self, topic=None):
        r = self.r
        h = self.hero()
        if topic is not None:
            an = [a for a in ANIMALS if a[0] == topic]
            if an:
                h["animal"] = an[0]
                h["desc"] = a_an(self.c(ADJ) + " " + topic)
        N, pr = h["name"], h["pr"]
        pos = "his" if pr == "he" else "her"
        obj = "him" if pr == "he" else "her"
        P = cap(pr)
        place = self.c(PLACES)
        thing = topic if (topic and topic in OBJECTS) else self.c(OBJECTS)
        tadj = self.c(ADJ)
        friend, fpr = self.c(NAMES)
        while friend == N:
            friend, fpr = self.c(NAMES)
        fdesc = self.c(["friend", "best friend", "neighbor", "little brother", "big sister", "grandma", "mom", "dad"])
        if fdesc in ("little brother",):
            fpr = "he"
        if fdesc in ("big sister", "grandma", "mom"):
            fpr = "she"
        if fdesc == "dad":
            fpr = "he"
        act = self.c(ACTIVITIES).format(place=place, pos=pos)
        s = []
        # opening
        opening = self.c([
            "Once upon a time, there was {d} named {N}.",
            "Once upon a time, in a {adj} {place2}, there lived {d} named {N}.",
            "There was once {d} called {N}.",
            "{N} was {d} who lived near a {place2}.",
            "Long ago, {d} named {N} lived in a {adj} {place2}.",
        ])
        d = h["desc"]
        if d is None:
            d = a_an(self.c(["kind", "little", "happy", "clever", "curious", "brave", "quiet"])) + " " + ("girl" if pr == "she" else "boy")
        s.append(opening.format(d=d, N=N, adj=self.c(ADJ), place2=self.c(["town", "village", "house", "forest", "farm", "city"])))
        s.append(self.c(["{P} loved to {act}.", "Every day, {N} liked to {act}.", "{N}'s favorite thing was to {act}.",
                         "{P} was always {f}, and {pr} loved to {act}."]).format(P=P, N=N, pr=pr, act=act, f=self.c(["happy", "busy", "curious", "kind", "cheerful"])))
        if h["animal"] and r.random() < 0.5:
            a = h["animal"]
            s.append(self.c(["{N} liked to eat {food}.", "When {N} was happy, {pr} {sound}.", "{N} {move} all around the {place}."]).format(
                N=N, pr=pr, food=a[2], sound=a[1], move=a[4], place=place))
        # problem
        kind = r.randrange(4)
        time = self.c(TIMES)
        if kind == 0:  # found something
            s.append(f"{time}, {N} went to the {place}. There, {pr} found {a_an(tadj + ' ' + thing)}.")
            s.append(self.c([f"\"What is this?\" {N} asked.", f"\"Wow!\" said {N}. \"Look at this {thing}!\"",
                             f"{N} picked up the {thing} and looked at it for a long time."]))
            s.append(self.c([f"{P} wanted to keep it, but then {pr} saw that it belonged to {friend}.",
                             f"{P} showed the {thing} to {pos} {fdesc}, {friend}.",
                             f"But the {thing} was stuck, and {N} could not take it home."]))
            s.append(self.c([f"{N} gave the {thing} back to {friend}. {friend} was so {self.c(['happy', 'glad', 'thankful'])} that {fpr} gave {N} a big hug.",
                             f"{friend} smiled and said, \"Let's play with it together!\" So they played with the {thing} all day.",
                             f"{N} asked {friend} for help. Together they pulled and pulled, and at last the {thing} came free."]))
        elif kind == 1:  # lost something
            s.append(f"{time}, {N} could not find {pos} {tadj} {thing}. {P} looked under the bed and behind the door, but it was not there.")
            s.append(self.c([f"{N} felt very {self.c(['sad', 'worried', 'upset'])}. \"Where is my {thing}?\" {pr} cried.",
                             f"\"Oh no!\" said {N}. \"I need my {thing}!\""]))
            s.append(self.c([f"{P} went to ask {pos} {fdesc}, {friend}. \"Don't worry,\" said {friend}. \"I will help you look.\"",
                             f"Then {friend} came to visit. {cap(fpr)} saw that {N} was sad and asked what was wrong."]))
            s.append(self.c([f"They looked in the {place} and in the garden. At last, {friend} found the {thing} under a {self.c(['big tree', 'chair', 'pile of leaves', 'table', 'blanket'])}.",
                             f"They searched everywhere. In the end, the {thing} was in {N}'s bag all along! They both laughed."]))
        elif kind == 2:  # wanted something / challenge
            goal = self.c(["climb the tall tree", "win the race", "bake a cake for " + friend, "build a boat",
                           "cross the river", "find the lost puppy", "sing in the school show", "fly a kite on the hill",
                           "reach the top of the hill", "catch a fish in the lake"])
            s.append(f"{time}, {N} wanted to {goal}. But it was hard, and {pr} felt {self.c(['scared', 'tired', 'worried', 'small'])}.")
            s.append(self.c([f"\"I can't do it,\" said {N}.", f"{P} tried once, and {pr} fell down.", f"{P} tried and tried, but it did not work."]))
            s.append(self.c([f"{friend} saw {obj} and said, \"You can do it! Try one more time.\"",
                             f"Then {pos} {fdesc}, {friend}, came and showed {obj} a better way.",
                             f"{N} sat down and thought for a while. Then {pr} had a good idea."]))
            s.append(self.c([f"So {N} tried again, slowly and carefully. This time, {pr} did it!",
                             f"With a little help, {N} was able to {goal}. Everyone cheered.",
                             f"{P} did not give up, and at last {pr} made it."]))
        else:  # weather / adventure
            weather = self.c(["it started to rain", "a strong wind blew", "it began to snow", "the sky grew dark", "a big storm came"])
            s.append(f"{time}, {N} and {friend} went to the {place} to play. Suddenly, {weather}.")
            s.append(self.c([f"\"Let's go home!\" said {friend}.", f"{N} was {self.c(['scared', 'surprised', 'cold'])}, but {friend} held {pos} hand.",
                             f"They ran under a big tree to stay {self.c(['dry', 'safe', 'warm'])}."]))
            s.append(self.c([f"While they waited, they saw {a_an(self.c(ADJ) + ' ' + self.c(ANIMALS)[0])} hiding there too.",
                             f"They told stories and sang songs until it was over.",
                             f"Then they found {a_an(tadj + ' ' + thing)} on the ground."]))
            s.append(self.c([f"Soon the sun came out again, and a rainbow filled the sky.",
                             f"When it was over, they walked home together, {self.c(['happy', 'tired', 'laughing'])}."]))
        # ending
        s.append(self.c([f"In the end, {N} was very {self.c(['happy', 'proud', 'glad', 'thankful'])}.",
                         f"That night, {N} went to bed with a big smile.",
                         f"From that day on, {N} and {friend} were the best of friends.",
                         f"{N} never forgot that day."]))
        if r.random() < 0.5:
            s.append(f"{N} learned that {self.c(MORALS)}.")
        return " ".join(s)

    # ------------------------------------------------------------ chat
    def poem(self, thing):
        r = self.r
        a1, a2 = self.r.sample(ADJ, 2)
        lines = self.c([
            [f"The {thing} is {a1} and {a2},", f"it makes me smile all day.", f"I keep it close beside me,", f"and never throw it away."],
            [f"Oh little {thing}, so {a1},", f"you sit there in the sun.", f"You never ask for very much,", f"you are a lot of fun."],
            [f"I saw a {thing} by the sea,", f"as {a1} as it could be.", f"It waved at me and said hello,", f"and then it had to go."],
            [f"A {a1} {thing} went out to play,", f"upon a {a2} summer day.", f"It ran and jumped and sang a song,", f"and played until the day was gone."],
        ])
        return "\n".join(lines)

    def qa(self):
        r = self.r
        k = r.randrange(17)
        if k == 0:
            a = self.c(ANIMALS)
            q = self.c([f"What sound does a {a[0]} make?", f"What does a {a[0]} say?", f"How does a {a[0]} sound?"])
            return q, (f"A {a[0]} {a[1]}. It sounds like \"{a[6]}\"." if a[1] != "is mostly quiet" else f"A {a[0]} is mostly quiet.")
        if k == 1:
            a = self.c(ANIMALS)
            q = self.c([f"What do {a[5]} eat?", f"What does a {a[0]} eat?", f"What food do {a[5]} like?"])
            return q, f"{cap(a[5])} eat {a[2]}."
        if k == 2:
            a = self.c(ANIMALS)
            q = self.c([f"Where do {a[5]} live?", f"Where does a {a[0]} live?"])
            return q, f"{cap(a[5])} live in {a[3]}." if not a[3].startswith("a ") else f"A {a[0]} lives in {a[3]}."
        if k == 3:
            t, col = self.c(list(COLORS.items()))
            return self.c([f"What color is the {t}?", f"What color is a {t}?"]), f"The {t} is {col}." if t in ("sky", "grass", "snow", "sun", "sea", "night sky") else f"A {t} is {col}."
        if k == 4:
            x, y = self.c(OPPOSITES)
            if r.random() < 0.5:
                x, y = y, x
            return self.c([f"What is the opposite of {x}?", f"What is the opposite of the word \"{x}\"?"]), f"The opposite of {x} is {y}."
        if k == 5:
            a, b = r.randrange(0, 11), r.randrange(0, 11)
            op = r.randrange(3)
            if op == 0:
                return self.c([f"What is {a} plus {b}?", f"What is {a} + {b}?", f"Can you add {a} and {b}?"]), f"{a} plus {b} is {a + b}."
            if op == 1:
                a, b = max(a, b), min(a, b)
                return self.c([f"What is {a} minus {b}?", f"What is {a} - {b}?"]), f"{a} minus {b} is {a - b}."
            return self.c([f"What is {a} times {b}?", f"What is {a} x {b}?"]), f"{a} times {b} is {a * b}."
        if k == 6:
            i = r.randrange(7)
            return f"What day comes after {DAYS[i]}?", f"{DAYS[(i + 1) % 7]} comes after {DAYS[i]}."
        if k == 7:
            i = r.randrange(12)
            return f"What month comes after {MONTHS[i]}?", f"{MONTHS[(i + 1) % 12]} comes after {MONTHS[i]}."
        if k == 8:
            w = self.c([a[0] for a in ANIMALS] + OBJECTS[:20])
            w = w.replace(" ", "")
            return self.c([f"How do you spell {w}?", f"Can you spell {w}?"]), f"{cap(w)} is spelled {'-'.join(w.upper())}."
        if k == 9:
            w, d = self.c(list(DEFS.items()))
            return self.c([f"What is {a_an(w)}?", f"What does \"{w}\" mean?", f"Can you explain what {a_an(w)} is?"]), d
        if k == 10:
            return self.c(FACTS)
        if k == 11:
            g, ans = self.c(GREET)
            return g, ans if ans else self.c(JOKES)
        if k == 12:
            t = self.c(list(TIPS))
            tips = r.sample(TIPS[t], 3)
            q = self.c([f"How can I {t}?", f"Give me three tips to {t}.", f"What should I do to {t}?"])
            if r.random() < 0.5:
                ans = f"Here are three tips to {t}:\n1. {cap(tips[0])}.\n2. {cap(tips[1])}.\n3. {cap(tips[2])}."
            else:
                ans = f"To {t}, {tips[0]}, {tips[1]}, and {tips[2]}."
            return q, ans
        if k == 13:
            topic = self.c([a[0] for a in ANIMALS] + OBJECTS)
            q = self.c([f"Tell me a story about {a_an(topic)}.", f"Can you tell me a short story about {a_an(topic)}?",
                        f"Write a story about {a_an(topic)}.", "Tell me a story.", "Tell me a bedtime story."])
            return q, self.story(topic if "about" in q else None)
        if k == 14:
            thing = self.c(OBJECTS + [a[0] for a in ANIMALS])
            return self.c([f"Write a poem about {a_an(thing)}.", f"Write a short poem about the {thing}."]), self.poem(thing)
        if k == 15:
            n = r.randrange(2, 11)
            return f"Can you count to {NUMBER_WORDS[n]}?", ", ".join(str(i) for i in range(1, n + 1)) + "."
        # describe a place
        p = self.c(PLACES)
        things = r.sample(["trees", "flowers", "people", "birds", "children playing", "old stones", "small houses",
                           "boats", "benches", "paths", "shops", "animals"], 3)
        return (self.c([f"Describe a {p}.", f"What is a {p} like?"]),
                f"A {p} can be a {self.c(['quiet', 'busy', 'lovely', 'peaceful', 'lively'])} place. You might see {things[0]}, {things[1]} and {things[2]}. "
                f"Many people like to go there {self.c(['on sunny days', 'in the morning', 'with their friends', 'on the weekend'])}.")

    def conversation(self):
        r = self.r
        sys_line, pirate = None, False
        if r.random() < 0.12:
            if r.random() < 0.25:
                pirate = True
                sys_line = self.c(["You are a pirate. Talk like a pirate.", "Answer like a pirate.",
                                   "You are a friendly pirate captain.", "Speak like an old sea pirate."])
            else:
                sys_line = self.c(["You are a helpful assistant.", "You are a friendly assistant.",
                                   "You are a kind and helpful assistant. Answer clearly.", "Be helpful and polite."])
        turns = []
        nt = self.c([1, 1, 1, 2, 2, 3])
        for _ in range(nt):
            q, a = self.qa()
            if pirate:
                a = piratify(a, self.r)
            turns.append(f"User: {q}\n\nAssistant: {a}\n\n")
        return (f"System: {sys_line}\n\n" if sys_line else "") + "".join(turns)


PIRATE_WORDS = [(r"\bHello\b", "Ahoy"), (r"\bhello\b", "ahoy"), (r"\bHi\b", "Ahoy"), (r"\byou\b", "ye"),
                (r"\bYou\b", "Ye"), (r"\byour\b", "yer"), (r"\bYour\b", "Yer"), (r"\bmy\b", "me"), (r"\bMy\b", "Me"),
                (r"\bis\b", "be"), (r"\bare\b", "be"), (r"\byes\b", "aye"), (r"\bYes\b", "Aye"),
                (r"\bfriend\b", "matey"), (r"\bfriends\b", "mateys"), (r"\bthe sea\b", "the briny deep"),
                (r"\bmoney\b", "doubloons"), (r"\bcoin\b", "doubloon"), (r"\bvery\b", "mighty"),
                (r"\bOf course\b", "Aye, of course"), (r"\bgood\b", "fine"), (r"\bthink\b", "reckon"),
                (r"\bstop\b", "avast"), (r"\bfor\b", "fer"), (r"\bold\b", "ol'")]
PIRATE_OPEN = ["Arr! ", "Arr, matey! ", "Ahoy! ", "Yo ho ho! ", "Arr, listen well. ", "Shiver me timbers! "]
PIRATE_CLOSE = [" Arr!", " Yo ho ho!", " Arr, matey.", " Now hoist the sails!", ""]


def piratify(text, r):
    for pat, rep in PIRATE_WORDS:
        text = re.sub(pat, rep, text)
    text = re.sub(r"(\w{3,})ing\b", r"\1in'", text)
    return r.choice(PIRATE_OPEN) + text + r.choice(PIRATE_CLOSE)


def gen_text(gen, kind, nbytes):
    parts, n = [], 0
    while n < nbytes:
        p = (gen.story() + "\n\n") if kind == "stories" else gen.conversation()
        parts.append(p)
        n += len(p)
    return "".join(parts)


def write_gz(path, text):
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as f:
        f.write(text.encode("utf-8"))


def main():
    os.makedirs(DATA, exist_ok=True)
    aus, held = build_austen()
    g = Gen(SEED)
    stories = gen_text(g, "stories", STORIES_BYTES)
    chat = gen_text(g, "chat", CHAT_BYTES)
    # held-out: 2048 bytes of the withheld Austen passage + 2048 bytes from another seed
    hg = Gen(SEED + 1)
    held_gen = gen_text(hg, "stories", 1200) + gen_text(hg, "chat", 2000)
    heldout = (held[:2048] + held_gen[:2048]).encode("ascii")
    assert len(heldout) == 4096
    for name, text in (("austen.txt.gz", aus), ("stories.txt.gz", stories), ("chat.txt.gz", chat)):
        write_gz(os.path.join(DATA, name), text)
        print(f"{name}: {len(text.encode('utf-8'))} bytes, sha256 {hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}")
    os.makedirs(os.path.join(ROOT, "models"), exist_ok=True)
    with open(os.path.join(ROOT, "models", "heldout.txt"), "wb") as f:
        f.write(heldout)
    print(f"models/heldout.txt: {len(heldout)} bytes, sha256 {hashlib.sha256(heldout).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
