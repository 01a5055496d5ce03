"""Image chat as people ask it: many phrasings, two languages, follow-ups, and no image at all.

A task's Sample (glassgpt.data.images) knows what its image shows (`facts`: kind -> English and
Chinese answer) and what its question is about (`kind`, `slots`). This module turns one into a
conversation for training: a question drawn from the TRAINING templates below (>= 20 per task and
language), a short or a full-sentence answer, sometimes a follow-up about the same image in a
later turn; and, now and then, a question with no image attached (the answer says there is none)
or an image with a question that has nothing to do with it (the answer ignores the image).

The phrasings used for evaluation are a separate hand-written file in the evals' registry data
(glassgpt.evals.elsuite.vision_chat.PHRASINGS_FILE), read only by the evals. Nothing here reads
it: tests check that the training path cannot load it and that none of its phrasings is one of
these templates.

Messages use glassgpt.data.chat's parts; an answer a reading task must spell is a
{"type": "spell", "text": ...} part, which `spelled` turns into one token per character.
"""

from __future__ import annotations

import random
import re

from glassgpt.data.images import ZH, Sample, zh_words

LANGS = ("en", "zh")

# --------------------------------------------------------------------------- training questions
# (task, kind) -> {lang: [templates]}; slots: {shape} {colour} {dir} {a} {b} {bar}, each given in
# the question's language.
Q: dict[tuple[str, str], dict[str, list[str]]] = {
    ("digits", "digit"): {
        "en": ["Which digit is this?", "What digit is shown?", "What number is written here?", "Which number is this?",
               "Read the digit.", "What digit do you see?", "Tell me the digit in the image.", "Which digit is in the picture?",
               "What is this handwritten digit?", "Name the digit.", "What number is this?", "Identify the digit.",
               "Which digit has been written?", "What's the digit?", "Can you read this digit?", "Which of 0-9 is this?",
               "What single digit appears in the image?", "Say which digit this is.", "What digit is drawn here?",
               "Recognise the digit in this scan."],
        "zh": ["这是哪个数字?", "图中是什么数字?", "这里写的是几?", "这个数字是多少?", "读出这个数字。", "你看到的是哪个数字?",
               "告诉我图里的数字。", "图片中是哪个数字?", "这个手写数字是什么?", "说出这个数字。", "这是数字几?", "识别这个数字。",
               "写的是哪个数字?", "数字是什么?", "你能认出这个数字吗?", "这是0到9中的哪一个?", "图中出现的是哪个数字?",
               "请说出这是哪个数字。", "这里画的是什么数字?", "识别这张扫描图里的数字。"],
    },
    ("digits", "parity"): {
        "en": ["Is it even or odd?", "Is that number odd or even?", "Odd or even?", "Is the digit even or odd?"],
        "zh": ["它是奇数还是偶数?", "这个数是偶数还是奇数?", "奇数还是偶数?", "这个数字是单数还是双数?"],
    },
    ("shapes", "count"): {
        "en": ["How many shapes are there?", "Count the shapes.", "How many objects are in the image?",
               "What is the number of shapes?", "How many shapes do you see?", "Count the objects in the picture."],
        "zh": ["图中有几个形状?", "数一数有多少个形状。", "图片里有多少个物体?", "形状的数量是多少?", "你看到几个形状?",
               "数一下图中的物体。"],
    },
    ("shapes", "colour"): {
        "en": ["What colour is the {shape}?", "Which colour is the {shape}?", "What is the colour of the {shape}?",
               "Tell me the colour of the {shape}.", "The {shape} is what colour?", "What colour has the {shape}?"],
        "zh": ["{shape}是什么颜色?", "{shape}是哪种颜色?", "{shape}的颜色是什么?", "告诉我{shape}的颜色。", "那个{shape}是什么颜色的?",
               "{shape}用的是什么颜色?"],
    },
    ("shapes", "shape"): {
        "en": ["What shape is the {colour} one?", "Which shape is {colour}?", "What is the {colour} shape?",
               "Name the shape that is {colour}.", "The {colour} object is which shape?", "What kind of shape is the {colour} one?"],
        "zh": ["{colour}的是什么形状?", "哪个形状是{colour}的?", "{colour}的那个是什么形状?", "说出{colour}物体的形状。",
               "{colour}的物体是哪种形状?", "{colour}的图形是什么?"],
    },
    ("shapes", "relation"): {
        "en": ["Which is {dir}, the {a} or the {b}?", "Of the {a} and the {b}, which is {dir}?",
               "Which one is {dir}: the {a} or the {b}?", "Is the {a} or the {b} {dir}?",
               "Between the {a} and the {b}, which is {dir}?", "Tell me which is {dir}, the {a} or the {b}."],
        "zh": ["{a}和{b},哪个{dir}?", "{a}与{b}相比,哪一个{dir}?", "哪个{dir}:{a}还是{b}?", "是{a}{dir}还是{b}{dir}?",
               "在{a}和{b}之间,哪个{dir}?", "告诉我{a}和{b}哪个{dir}。"],
    },
    ("text", "read"): {
        "en": ["What does the text say?", "Read the text.", "What is written here?", "What characters are shown?",
               "Transcribe the text.", "What does it say?", "Read out the letters.", "What string is in the image?",
               "Type out what is written.", "What text do you see?", "Copy the text in the picture.", "What is the code shown?",
               "Read this for me.", "Which characters appear?", "Spell out the text.", "What's written in the image?",
               "Tell me the text.", "What letters and digits are there?", "Can you read the text?", "What does the label say?"],
        "zh": ["文字写的是什么?", "读一下这段文字。", "这里写了什么?", "图中显示的是哪些字符?", "把文字抄下来。", "上面写的什么?",
               "读出这些字母。", "图片里的字符串是什么?", "把写的内容打出来。", "你看到什么文字?", "抄写图中的文字。", "显示的代码是什么?",
               "帮我读一下。", "出现了哪些字符?", "逐个拼出文字。", "图片里写着什么?", "告诉我文字内容。", "有哪些字母和数字?",
               "你能读出文字吗?", "标签上写的是什么?"],
    },
    ("text", "length"): {
        "en": ["How many characters is that?", "How long is it?", "How many characters does it have?"],
        "zh": ["一共有几个字符?", "它有多长?", "有多少个字符?"],
    },
    ("charts", "largest"): {
        "en": ["Which bar is largest?", "Which bar is the tallest?", "Which bar has the biggest value?", "Name the highest bar.",
               "What is the label of the largest bar?", "Which bar is the biggest?", "Which category has the largest bar?"],
        "zh": ["哪根柱子最大?", "哪根柱子最高?", "哪根柱子的数值最大?", "说出最高的柱子。", "最大的柱子标签是什么?", "哪个柱子最长?",
               "哪一类的柱子最大?"],
    },
    ("charts", "value"): {
        "en": ["What is the value of bar {bar}?", "How high is bar {bar}?", "What number does bar {bar} show?",
               "Read the value of bar {bar}.", "What is bar {bar}'s value?", "Which value is bar {bar}?", "How much is bar {bar}?"],
        "zh": ["柱子{bar}的数值是多少?", "柱子{bar}有多高?", "柱子{bar}显示的数字是多少?", "读出柱子{bar}的值。", "{bar}柱的值是多少?",
               "柱子{bar}是多少?", "{bar}的数值是几?"],
    },
    ("charts", "highest"): {
        "en": ["Which point is highest?", "Which point is the highest?", "Where does the line peak?", "Which label has the top point?",
               "Which point is at the top?", "Name the highest point.", "At which label is the line highest?"],
        "zh": ["哪个点最高?", "最高的点是哪个?", "折线在哪里达到最高?", "哪个标签的点最高?", "哪个点在最上面?", "说出最高的点。",
               "折线在哪个标签处最高?"],
    },
    ("emoji", "name"): {
        "en": ["What is this emoji called?", "Name this emoji.", "What emoji is this?", "What's the name of this emoji?",
               "Which emoji is shown?", "Tell me the emoji's name.", "What does this emoji show?", "Identify this emoji.",
               "What is the emoji in the picture?", "Give the name of this emoji."],
        "zh": ["这个表情符号叫什么?", "说出这个表情的名字。", "这是什么表情符号?", "这个emoji的名字是什么?", "图中是哪个表情?",
               "告诉我这个表情的名称。", "这个表情画的是什么?", "识别这个表情符号。", "图片里的emoji是什么?", "给出这个表情的名字。"],
    },
    ("emoji", "category"): {
        "en": ["Which category is this emoji in?", "What category does this emoji belong to?", "Which emoji group is this from?",
               "What kind of emoji is this?", "In which category would you find this emoji?", "Name the emoji's category.",
               "Which section of the emoji keyboard is this in?", "What type of emoji is it?", "Classify this emoji.",
               "Tell me the category of this emoji."],
        "zh": ["这个表情属于哪个类别?", "这个emoji属于哪一类?", "这个表情来自哪个分组?", "这是哪种表情符号?", "在哪个分类里能找到这个表情?",
               "说出这个表情的类别。", "它在表情键盘的哪个分区?", "这是什么类型的emoji?", "给这个表情分类。", "告诉我这个表情的类别。"],
    },
    ("flags", "country"): {
        "en": ["Which country's flag is this?", "Whose flag is this?", "What country does this flag belong to?", "Name the country of this flag.",
               "Which nation uses this flag?", "What flag is this?", "Identify the flag.", "This is the flag of which country?",
               "Tell me which country this flag is from.", "Which country is this flag for?", "What country is represented by this flag?",
               "Whose national flag is shown?", "Which country flies this flag?", "Recognise this flag.", "What country's flag do you see?",
               "Which place has this flag?", "The flag belongs to which country?", "Name the flag.", "What nation is this flag?",
               "Which country has a flag like this?"],
        "zh": ["这是哪个国家的国旗?", "这面旗是谁的?", "这面旗子属于哪个国家?", "说出这面国旗的国家。", "哪个国家使用这面旗?",
               "这是什么旗?", "识别这面旗帜。", "这是哪国国旗?", "告诉我这面旗来自哪个国家。", "这面旗代表哪个国家?", "这面旗帜代表的是哪国?",
               "图中是谁的国旗?", "哪个国家挂这面旗?", "认一认这面旗。", "你看到的是哪国的国旗?", "哪个地方用这面旗?", "这面旗属于哪国?",
               "说出这面旗的名字。", "这是哪个国家的旗帜?", "哪个国家的国旗长这样?"],
    },
    ("words", "read"): {
        "en": ["What word is written here?", "Read the word.", "What does this word say?", "Which word is this?", "What is the word?",
               "Read this handwriting.", "What word do you see?", "Transcribe the word.", "What's written in this font?",
               "Tell me the word in the image.", "Spell the word shown.", "What is written?", "Read what it says.",
               "Which word appears in the picture?", "Type the word you see.", "Can you read this word?", "What word is shown?",
               "Copy the word.", "What does the writing say?", "Name the word written here."],
        "zh": ["这里写的是什么单词?", "读一下这个单词。", "这个词写的是什么?", "这是哪个单词?", "单词是什么?", "读一读这段手写。",
               "你看到什么单词?", "把单词抄下来。", "这种字体写的是什么?", "告诉我图中的单词。", "拼出图里的单词。", "写的是什么?",
               "读出上面写的。", "图片里出现了哪个单词?", "打出你看到的单词。", "你能读出这个词吗?", "显示的是什么单词?", "抄写这个单词。",
               "这段字写的是什么?", "说出这里写的单词。"],
    },
    ("words", "length"): {
        "en": ["How many letters does it have?", "How long is that word?", "How many letters is that?"],
        "zh": ["这个词有几个字母?", "这个单词多长?", "一共几个字母?"],
    },
    ("hanzi", "read"): {
        "en": ["What character is this?", "Which Chinese character is shown?", "Read this character.", "What is this Chinese character?",
               "Which hanzi is this?", "What character do you see?", "Identify the character.", "Tell me the character in the image.",
               "What Chinese character is written here?", "Name this character.", "Which character is in the picture?",
               "Can you read this character?", "What is the written character?", "Read the hanzi.", "Type the character shown.",
               "What is this glyph?", "Which character appears?", "Recognise this Chinese character.", "What does this character read?",
               "Copy the character."],
        "zh": ["这是什么字?", "图中是哪个汉字?", "读一下这个字。", "这个汉字是什么?", "这是哪个字?", "你看到的是什么字?", "识别这个字。",
               "告诉我图里的字。", "这里写的是什么汉字?", "说出这个字。", "图片里是哪个字?", "你认识这个字吗?", "写的是什么字?",
               "读出这个汉字。", "打出图中的字。", "这个字形是什么字?", "出现的是哪个字?", "认一认这个汉字。", "这个字念什么?",
               "抄写这个字。"],
    },
}

# (task, kind) -> {lang: [answers]}: "{a}" alone is the short answer; the rest are sentences.
A: dict[tuple[str, str], dict[str, list[str]]] = {
    ("digits", "digit"): {"en": ["{a}", "It looks like {a}.", "That is the digit {a}.", "The digit is {a}."],
                          "zh": ["{a}", "这是数字{a}。", "图中的数字是{a}。", "是{a}。"]},
    ("digits", "parity"): {"en": ["{a}", "It's {a}."], "zh": ["{a}", "是{a}。"]},
    ("shapes", "count"): {"en": ["{a}", "I count {a}.", "The number of shapes is {a}."], "zh": ["{a}", "有{a}个。", "一共{a}个。"]},
    ("shapes", "colour"): {"en": ["{a}", "It is {a}.", "The colour is {a}."], "zh": ["{a}", "是{a}的。", "颜色是{a}。"]},
    ("shapes", "shape"): {"en": ["{a}", "It's a {a}.", "That one is a {a}."], "zh": ["{a}", "是{a}。", "那是一个{a}。"]},
    ("shapes", "relation"): {"en": ["{a}", "The {a}.", "The {a} is."], "zh": ["{a}", "是{a}。", "{a}。"]},
    ("text", "read"): {"en": ["{a}", "It says {a}.", "The text reads {a}."], "zh": ["{a}", "写的是{a}。", "文字是{a}。"]},
    ("text", "length"): {"en": ["{a}", "It has {a} characters."], "zh": ["{a}", "一共{a}个字符。"]},
    ("charts", "largest"): {"en": ["{a}", "Bar {a} is the largest.", "The largest bar is {a}."],
                            "zh": ["{a}", "柱子{a}最大。", "最大的是{a}。"]},
    ("charts", "value"): {"en": ["{a}", "Its value is {a}.", "It shows {a}."], "zh": ["{a}", "数值是{a}。", "是{a}。"]},
    ("charts", "highest"): {"en": ["{a}", "Point {a} is the highest.", "The line peaks at {a}."],
                            "zh": ["{a}", "{a}点最高。", "最高的是{a}。"]},
    ("emoji", "name"): {"en": ["{a}", "It's the {a} emoji.", "This is {a}."], "zh": ["{a}", "这是{a}。", "这个表情是{a}。"]},
    ("emoji", "category"): {"en": ["{a}", "It belongs to {a}.", "The category is {a}."],
                            "zh": ["{a}", "属于{a}。", "类别是{a}。"]},
    ("flags", "country"): {"en": ["{a}", "It's the flag of {a}.", "That flag belongs to {a}."],
                           "zh": ["{a}", "这是{a}的国旗。", "这面旗属于{a}。"]},
    ("words", "read"): {"en": ["{a}", "It says {a}.", "The word is {a}."], "zh": ["{a}", "写的是{a}。", "单词是{a}。"]},
    ("words", "length"): {"en": ["{a}", "It has {a} letters."], "zh": ["{a}", "有{a}个字母。"]},
    ("hanzi", "read"): {"en": ["{a}", "It's the character {a}.", "That character is {a}."],
                        "zh": ["{a}", "这是“{a}”字。", "这个字是{a}。"]},
}
SPELLED = {"text", "words"}  # answers spelled one character a token, as sources.answer_ids does (glyphs are task text)

# Follow-ups that need no second fact: the other language's answer, or a confirmation.
TRANSLATE = {"en": ["What is that in Chinese?", "And in Chinese?", "How do you say that in Chinese?"],
             "zh": ["用英文怎么说?", "英文是什么?", "那英文叫什么?"]}
CONFIRM = {"en": (["Are you sure?", "Really?", "Can you check again?"], "Yes, {full}"),
           "zh": (["你确定吗?", "真的吗?", "再看一下?"], "是的,{full}")}

# A question about an image with none attached: the answer says so, in the question's language.
NO_IMAGE = {"en": ["I don't see an image in your message. Please attach one and ask again.",
                   "There is no image attached, so I can't tell. Could you attach it?",
                   "No image came with your message. Please send the picture."],
            "zh": ["你的消息里没有图片,请附上图片再问。", "没有看到图片,所以无法回答。请上传图片。", "消息中没有图片,请把图片发给我。"]}
# What counts, in an eval, as saying there is no image.
NO_IMAGE_MARKERS = ("no image", "don't see an image", "do not see an image", "not see any image", "attach", "send the picture",
                    "没有图片", "没有看到图片", "附上", "上传", "发给我")

# Questions unrelated to the attached image: answered as if it were not there.
UNRELATED = {"en": (["What is {x} plus {y}?", "What's {x} + {y}?", "Add {x} and {y}."], "{x} + {y} = {z}."),
             "zh": (["{x}加{y}等于多少?", "{x} + {y} 是多少?", "算一下{x}加{y}。"], "{x} + {y} = {z}。")}


def _zh_slot(v: str) -> str:
    return zh_words(v) if any(w in ZH for w in v.split()) or v in ZH else v


def slots_in(s: Sample, lang: str) -> dict:
    return {k: (_zh_slot(v) if lang == "zh" else v) for k, v in s.slots.items() if isinstance(v, str)}


def question(s: Sample, lang: str, template: str) -> str:
    return template.format(**slots_in(s, lang))


def answer_parts(task: str, template: str, a: str) -> list[dict]:
    """An answer sentence as chat parts; a reading task's answer is spelled (one token a character)."""
    pre, _, post = template.partition("{a}")
    mid = {"type": "spell", "text": a} if task in SPELLED else {"type": "text", "text": a}
    return [p for p in ({"type": "text", "text": pre}, mid, {"type": "text", "text": post}) if p["text"]]


def _turn(s: Sample, kind: str, lang: str, rng: random.Random, first: bool):
    key = (s.task, kind)
    q = question(s, lang, rng.choice(Q[key][lang]))
    a = s.facts[kind][0 if lang == "en" else 1]
    tmpl = rng.choice(A[key][lang])
    content = ([{"type": "image"}] if first else []) + [{"type": "text", "text": q}]
    return [{"role": "user", "content": content},
            {"role": "assistant", "content": answer_parts(s.task if kind == "read" else "", tmpl, a)}], tmpl, a


def conversation(s: Sample, rng: random.Random, lang: str | None = None, follow_up: float = 0.35) -> list[dict]:
    """One image-chat conversation about s (its image is the first user turn's image part)."""
    lang = lang or rng.choice(LANGS)
    kind = s.kind if (s.task, s.kind) in Q else None
    if kind is None:  # a task without phrasings (scenes, photos): its own question, short answer
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.question}]},
                {"role": "assistant", "content": s.answer}]
    msgs, tmpl, a = _turn(s, kind, lang, rng, True)
    if rng.random() < follow_up:
        others = [k for k in s.facts if k != kind and (s.task, k) in Q]
        en, zh = s.facts[kind]
        if others:
            msgs += _turn(s, rng.choice(others), lang, rng, False)[0]
        elif en != zh and rng.random() < 0.7:
            msgs += [{"role": "user", "content": rng.choice(TRANSLATE[lang])},
                     {"role": "assistant", "content": zh if lang == "en" else en}]
        else:
            qs, reply = CONFIRM[lang]
            full = tmpl if tmpl != "{a}" else A[(s.task, kind)][lang][1]
            full = full[:1].lower() + full[1:] if lang == "en" and not full.startswith("{") else full
            msgs += [{"role": "user", "content": rng.choice(qs)},
                     {"role": "assistant", "content": answer_parts(s.task if kind == "read" else "",
                                                                   reply.replace("{full}", full), a)}]
    return msgs


def no_image_conversation(s: Sample, rng: random.Random, lang: str | None = None) -> list[dict]:
    """An image question (phrased from s) with no image attached, and the answer that says so."""
    lang = lang or rng.choice(LANGS)
    key = (s.task, s.kind)
    q = question(s, lang, rng.choice(Q[key][lang])) if key in Q else s.question
    return [{"role": "user", "content": q}, {"role": "assistant", "content": rng.choice(NO_IMAGE[lang])}]


def unrelated_conversation(rng: random.Random, lang: str | None = None) -> list[dict]:
    """An image with a question that is not about it: answered as asked."""
    lang = lang or rng.choice(LANGS)
    x, y = rng.randint(1, 50), rng.randint(1, 50)
    qs, a = UNRELATED[lang]
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": rng.choice(qs).format(x=x, y=y)}]},
            {"role": "assistant", "content": a.format(x=x, y=y, z=x + y)}]


def n_images(messages: list[dict]) -> int:
    return sum(1 for m in messages if not isinstance(m["content"], str)
               for p in m["content"] if p.get("type") not in ("text", "ids", "spell"))


def spelled(tok, messages: list[dict]) -> list[dict]:
    """Messages with every 'spell' part as token ids, one character a token (as sources.answer_ids)."""
    out = []
    for m in messages:
        c = m["content"]
        if not isinstance(c, str):
            parts = []
            for p in c:
                if p.get("type") == "spell":
                    ids = []
                    for ch in p["text"]:
                        ids += tok.encode(ch)
                    parts.append({"type": "ids", "ids": ids})
                else:
                    parts.append(p)
            c = parts
        out.append({**m, "content": c})
    return out


# --------------------------------------------------------------------------- scoring
_EDGE = r"[A-Za-z0-9]"


def says(reply: str, answer: str) -> bool:
    """Whether reply gives `answer`: as a whole word or number (any case) for Latin answers,
    contained for Chinese ones."""
    reply, answer = reply.strip(), answer.strip()
    if not answer:
        return False
    if re.search(r"[\u3000-\u9fff]", answer):
        return answer in reply
    # one letter (a chart's bar label) keeps its case: "a" in "a bar" is not bar A
    flags = re.IGNORECASE if len(answer) > 1 else 0
    return re.search(rf"(?<!{_EDGE}){re.escape(answer)}(?!{_EDGE})", reply, flags) is not None


def correct(reply: str, accepted) -> bool:
    return any(says(reply, a) for a in accepted)


def says_no_image(reply: str) -> bool:
    r = reply.lower().replace("’", "'")
    return any(m in r for m in NO_IMAGE_MARKERS)
