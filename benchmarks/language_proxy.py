"""Does the US-English phone model still carry the mouth in other languages? eSpeak NG as a proxy.

    python benchmarks/language_proxy.py [--languages en-us,de,...] [--rate 160] [-o language_proxy.json]
        [--plot language_proxy.png]

The phonetic encoder (runtime/audio/phonetic.py) gives posteriors of the 42 phones of CMU's
US-English acoustic model. Other languages' sounds may fit its phones less well; this measures how
much of the mouth's articulation its rows still predict, against log-mel's, per language:

1. Speech: the same five paragraphs of running text (narrative, a request, a question, lists),
   translated here by hand, spoken by eSpeak NG's voice of each language (the `espeakng-loader`
   wheel, offline; English is spoken by both en-us and en-gb) at 160 words per minute, 57-83 s per
   language, of which the first `--seconds` (50) are used.
2. The mouth: eSpeak's own phoneme timeline (espeak_Initialize with espeakINITIALIZE_PHONEME_EVENTS |
   espeakINITIALIZE_PHONEME_IPA; each espeakEVENT_PHONEME gives the phoneme in IPA and its start in
   ms) turned into a mouth opening per phoneme (`openness`: open vowels a/ɑ 1, open-mid ɛ/ɔ 0.7,
   mid e/o/ə ~0.5, near-close ɪ/ʊ/ᵻ 0.3, close i/u/y 0.2, labiodentals 0.1, other consonants 0.15,
   bilabials p/b/m and pauses 0; a diphthong's duration is split between its vowels), on a 1 ms
   grid, smoothed by a Gaussian (sigma 25 ms: a mouth does not jump), read at each 25 fps video
   frame's time (frame n at 40 n ms, the centre of its feature window).
3. The features: `MelEncoder().features` (32 log-mel), `phonetic_encoder().features` (42 phone
   posteriors), both, and a one-number loudness per row (log of the mel power summed over bands;
   the floor any audio feature should beat), 16-row windows per frame (`frame_windows`).
4. Ridge regression, 5-fold contiguous out-of-fold with an 8-frame gap around each test block and
   lambda chosen by inner contiguous folds inside each training part (the helper of
   benchmarks/audio_mouth_ceiling.py when it imports, else the same procedure here). `corr`: Pearson
   correlation of all folds' predictions with the target, `amp`: std(prediction) / std(target).

Also per language: `lag_frames`, the lag (frames) at which the target correlates best with the
loudness (0 or 1 means the event times are on the sound), and `phone_max_post`, the mean largest
phone posterior on speech rows (how sure the English model is of its phones).

CAVEAT: eSpeak NG is a formant synthesiser: clean, regular, one synthetic speaker per language, with
its own phoneme inventory and timing rules, and the mouth target is a rule of thumb on its phonemes,
not a tracked face. Read the table as how the two feature sets rank per language on a proxy, not as
what an avatar of a real speaker reaches.

Result (11 voices, 50 s each, ~30 s of CPU per language on a shared 2-core machine): phonetic - mel
is within +-0.015 correlation (per-fold mean) in all nine non-English languages (de, fr, es, it,
pt-br, nl, pl, cmn, ja), -0.003 on en-gb and -0.033 +- 0.012 on en-us; mel+phonetic beats both
everywhere (+0.02 to +0.04). No language penalty for the English model on this proxy.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np

from embedtalk_sdk.metrics import pearson
from embedtalk_sdk.runtime.audio.encoders import MelEncoder
from embedtalk_sdk.runtime.audio.io import prepare_audio
from embedtalk_sdk.runtime.audio.mel import frame_windows, n_video_frames

FPS = 25.0
WINDOW = 16
SMOOTH_MS = 25.0
FEATURE_SETS = ("loudness", "mel", "phonetic", "mel+phonetic")

# ---------------------------------------------------------------------------------------------
# The text: five paragraphs, the same content in each language.
TEXTS: dict[str, list[str]] = {
    "en": [
        "The morning train was late again, so Maria walked along the river instead. Small boats were moving "
        "slowly past the old bridge, and a man with a black umbrella was feeding the birds. She stopped for a "
        "moment to watch them, then hurried on, because the meeting started at nine.",
        "Could you please open the window? It is far too warm in here, and nobody can think clearly. Thank you. "
        "Now let us look at the numbers from last summer, when the little shop sold more bread than ever before.",
        "My grandfather built this house with his own hands. He always said that a good roof matters more than a "
        "big garden, but he spent every free evening among his apple trees.",
        "On Saturday the market had a bit of everything: music, maps, fresh fish and warm bread. People "
        "bargained, laughed and argued about the price of potatoes until the bells rang at noon.",
        "Why do cats always sit exactly where you want to work? Perhaps they simply enjoy the warm keyboard, or "
        "perhaps they believe that every paper on the table belongs to them.",
    ],
    "de": [
        "Der Zug am Morgen hatte wieder Verspätung, also ging Maria stattdessen am Fluss entlang. Kleine Boote "
        "fuhren langsam an der alten Brücke vorbei, und ein Mann mit einem schwarzen Regenschirm fütterte die "
        "Vögel. Sie blieb einen Moment stehen, um ihnen zuzusehen, und eilte dann weiter, denn die Besprechung "
        "begann um neun.",
        "Könnten Sie bitte das Fenster öffnen? Es ist viel zu warm hier drinnen, und niemand kann klar denken. "
        "Danke schön. Nun schauen wir uns die Zahlen vom letzten Sommer an, als der kleine Laden mehr Brot "
        "verkaufte als je zuvor.",
        "Mein Großvater hat dieses Haus mit seinen eigenen Händen gebaut. Er sagte immer, ein gutes Dach sei "
        "wichtiger als ein großer Garten, aber jeden freien Abend verbrachte er zwischen seinen Apfelbäumen.",
        "Am Samstag gab es auf dem Markt von allem etwas: Musik, Landkarten, frischen Fisch und warmes Brot. Die "
        "Leute feilschten, lachten und stritten über den Preis der Kartoffeln, bis mittags die Glocken läuteten.",
        "Warum sitzen Katzen immer genau dort, wo man arbeiten will? Vielleicht mögen sie einfach die warme "
        "Tastatur, oder vielleicht glauben sie, dass jedes Blatt Papier auf dem Tisch ihnen gehört.",
    ],
    "fr": [
        "Le train du matin était encore en retard, alors Maria a marché le long de la rivière. De petits bateaux "
        "passaient lentement sous le vieux pont, et un homme avec un parapluie noir donnait à manger aux oiseaux. "
        "Elle s'est arrêtée un moment pour les regarder, puis elle s'est dépêchée, car la réunion commençait à "
        "neuf heures.",
        "Pourriez-vous ouvrir la fenêtre, s'il vous plaît ? Il fait beaucoup trop chaud ici, et personne ne peut "
        "réfléchir. Merci beaucoup. Maintenant, regardons les chiffres de l'été dernier, quand la petite boutique "
        "a vendu plus de pain que jamais.",
        "Mon grand-père a construit cette maison de ses propres mains. Il disait toujours qu'un bon toit compte "
        "plus qu'un grand jardin, mais il passait chaque soirée libre parmi ses pommiers.",
        "Samedi, le marché avait un peu de tout : de la musique, des cartes, du poisson frais et du pain chaud. "
        "Les gens marchandaient, riaient et se disputaient sur le prix des pommes de terre jusqu'à ce que les "
        "cloches sonnent à midi.",
        "Pourquoi les chats s'assoient-ils toujours exactement là où l'on veut travailler ? Peut-être aiment-ils "
        "simplement le clavier chaud, ou peut-être croient-ils que chaque papier sur la table leur appartient.",
    ],
    "es": [
        "El tren de la mañana llegó tarde otra vez, así que María caminó junto al río. Pequeños barcos pasaban "
        "despacio bajo el viejo puente, y un hombre con un paraguas negro daba de comer a los pájaros. Ella se "
        "detuvo un momento para mirarlos y luego siguió deprisa, porque la reunión empezaba a las nueve.",
        "¿Podría abrir la ventana, por favor? Hace demasiado calor aquí dentro y nadie puede pensar con claridad. "
        "Muchas gracias. Ahora veamos los números del verano pasado, cuando la pequeña tienda vendió más pan que "
        "nunca.",
        "Mi abuelo construyó esta casa con sus propias manos. Siempre decía que un buen tejado importa más que un "
        "gran jardín, pero pasaba cada tarde libre entre sus manzanos.",
        "El sábado el mercado tenía un poco de todo: música, mapas, pescado fresco y pan caliente. La gente "
        "regateaba, se reía y discutía sobre el precio de las patatas hasta que las campanas sonaron al mediodía.",
        "¿Por qué los gatos siempre se sientan justo donde uno quiere trabajar? Quizás simplemente les gusta el "
        "teclado caliente, o quizás creen que cada papel de la mesa les pertenece.",
    ],
    "it": [
        "Il treno del mattino era di nuovo in ritardo, così Maria camminò lungo il fiume. Piccole barche passavano "
        "lentamente sotto il vecchio ponte, e un uomo con un ombrello nero dava da mangiare agli uccelli. Si fermò "
        "un momento a guardarli, poi si affrettò, perché la riunione cominciava alle nove.",
        "Potrebbe aprire la finestra, per favore? Fa troppo caldo qui dentro e nessuno riesce a pensare con "
        "chiarezza. Grazie mille. Ora guardiamo i numeri dell'estate scorsa, quando il piccolo negozio vendette "
        "più pane che mai.",
        "Mio nonno ha costruito questa casa con le sue mani. Diceva sempre che un buon tetto conta più di un "
        "grande giardino, ma passava ogni sera libera tra i suoi alberi di mele.",
        "Sabato il mercato aveva un po' di tutto: musica, mappe, pesce fresco e pane caldo. La gente contrattava, "
        "rideva e discuteva sul prezzo delle patate finché le campane suonarono a mezzogiorno.",
        "Perché i gatti si siedono sempre proprio dove vuoi lavorare? Forse amano semplicemente la tastiera calda, "
        "o forse credono che ogni foglio sul tavolo appartenga a loro.",
    ],
    "pt": [
        "O trem da manhã atrasou de novo, então Maria caminhou ao longo do rio. Pequenos barcos passavam devagar "
        "sob a velha ponte, e um homem com um guarda-chuva preto dava comida aos pássaros. Ela parou um momento "
        "para olhar e depois seguiu depressa, porque a reunião começava às nove.",
        "Você poderia abrir a janela, por favor? Está quente demais aqui dentro e ninguém consegue pensar direito. "
        "Muito obrigado. Agora vamos ver os números do verão passado, quando a pequena loja vendeu mais pão do "
        "que nunca.",
        "Meu avô construiu esta casa com as próprias mãos. Ele sempre dizia que um bom telhado importa mais do que "
        "um grande jardim, mas passava todas as noites livres entre as suas macieiras.",
        "No sábado a feira tinha um pouco de tudo: música, mapas, peixe fresco e pão quente. As pessoas "
        "pechinchavam, riam e discutiam o preço das batatas até os sinos tocarem ao meio-dia.",
        "Por que os gatos sempre se sentam exatamente onde a gente quer trabalhar? Talvez eles simplesmente gostem "
        "do teclado quente, ou talvez acreditem que todo papel da mesa pertence a eles.",
    ],
    "nl": [
        "De ochtendtrein was weer te laat, dus liep Maria in plaats daarvan langs de rivier. Kleine boten voeren "
        "langzaam onder de oude brug door, en een man met een zwarte paraplu voerde de vogels. Ze bleef even "
        "staan om naar ze te kijken en liep toen snel verder, want de vergadering begon om negen uur.",
        "Zou u alstublieft het raam open willen doen? Het is hier veel te warm en niemand kan helder denken. Dank "
        "u wel. Laten we nu naar de cijfers van vorige zomer kijken, toen de kleine winkel meer brood verkocht "
        "dan ooit.",
        "Mijn grootvader heeft dit huis met zijn eigen handen gebouwd. Hij zei altijd dat een goed dak "
        "belangrijker is dan een grote tuin, maar elke vrije avond bracht hij door tussen zijn appelbomen.",
        "Op zaterdag had de markt van alles wat: muziek, kaarten, verse vis en warm brood. Mensen pingelden, "
        "lachten en maakten ruzie over de prijs van de aardappelen tot de klokken om twaalf uur luidden.",
        "Waarom gaan katten altijd precies zitten waar jij wilt werken? Misschien houden ze gewoon van het warme "
        "toetsenbord, of misschien denken ze dat elk papier op tafel van hen is.",
    ],
    "pl": [
        "Poranny pociąg znowu się spóźnił, więc Maria poszła wzdłuż rzeki. Małe łodzie powoli przepływały pod "
        "starym mostem, a mężczyzna z czarnym parasolem karmił ptaki. Zatrzymała się na chwilę, żeby na nie "
        "popatrzeć, a potem pospieszyła dalej, bo spotkanie zaczynało się o dziewiątej.",
        "Czy mógłby pan otworzyć okno? Jest tu o wiele za ciepło i nikt nie może jasno myśleć. Dziękuję bardzo. "
        "Teraz spójrzmy na liczby z zeszłego lata, kiedy mały sklep sprzedał więcej chleba niż kiedykolwiek.",
        "Mój dziadek zbudował ten dom własnymi rękami. Zawsze mówił, że dobry dach jest ważniejszy niż duży "
        "ogród, ale każdy wolny wieczór spędzał wśród swoich jabłoni.",
        "W sobotę na targu było wszystkiego po trochu: muzyka, mapy, świeże ryby i ciepły chleb. Ludzie się "
        "targowali, śmiali i kłócili o cenę ziemniaków, aż w południe zabiły dzwony.",
        "Dlaczego koty zawsze siadają dokładnie tam, gdzie chcesz pracować? Może po prostu lubią ciepłą "
        "klawiaturę, a może wierzą, że każdy papier na stole należy do nich.",
    ],
    "cmn": [
        "早上的火车又晚点了，所以玛丽亚沿着河边走路。小船慢慢地从旧桥下经过，一个拿着黑伞的男人在喂鸟。"
        "她停下来看了一会儿，然后匆匆往前走，因为会议九点开始。",
        "请你把窗户打开，好吗？这里太热了，谁都没办法好好思考。谢谢你。现在我们来看看去年夏天的数字，"
        "那时候小商店卖出的面包比以前任何时候都多。",
        "我的爷爷亲手盖了这座房子。他总是说，一个好屋顶比一个大花园更重要，可是每个空闲的晚上，"
        "他都待在他的苹果树中间。",
        "星期六的市场什么都有：音乐，地图，新鲜的鱼和热面包。人们讨价还价，说说笑笑，为了土豆的价格争论不休，"
        "一直到中午钟声响起。",
        "为什么猫总是坐在你想工作的地方？也许它们只是喜欢温暖的键盘，也许它们觉得桌子上的每一张纸都属于自己。",
    ],
    # kana only: eSpeak's Japanese reads kana, not kanji
    "ja": [
        "あさの でんしゃが また おくれたので、マリアは かわに そって あるきました。ちいさな ふねが ふるい "
        "はしの したを ゆっくり とおって いきました。くろい かさを もった おとこのひとが とりに えさを "
        "あげて いました。かのじょは すこし たちどまって それを みてから、いそいで あるきだしました。"
        "かいぎは くじに はじまるからです。",
        "まどを あけて いただけますか。ここは あつすぎて、だれも よく かんがえられません。どうも ありがとう "
        "ございます。では、きょねんの なつの すうじを みましょう。ちいさな みせが いままでで いちばん "
        "たくさん パンを うった なつです。",
        "わたしの おじいさんは じぶんの てで この いえを たてました。いい やねは おおきな にわより "
        "だいじだと いつも いって いましたが、ひまな よるは いつも りんごの きの あいだで すごして いました。",
        "どようびの いちばには なんでも ありました。おんがく、ちず、あたらしい さかな、そして あたたかい パン。"
        "ひとびとは ねぎったり、わらったり、じゃがいもの ねだんに ついて いいあったり して、おひるの かねが "
        "なるまで にぎやかでした。",
        "どうして ねこは いつも しごとを したい ところに すわるのでしょう。たぶん あたたかい キーボードが "
        "すきなだけかも しれません。それとも つくえの うえの かみは ぜんぶ じぶんの ものだと おもって "
        "いるのかも しれません。",
    ],
}
# language -> (the eSpeak voice's name, the text); eSpeak's "en" is British English
LANGUAGES: dict[str, tuple[str, str]] = {
    "en-us": ("en-us", "en"), "en-gb": ("en", "en"), "de": ("de", "de"), "fr": ("fr", "fr"), "es": ("es", "es"),
    "it": ("it", "it"), "pt-br": ("pt-br", "pt"), "nl": ("nl", "nl"), "pl": ("pl", "pl"), "cmn": ("cmn", "cmn"),
    "ja": ("ja", "ja"),
}

# ---------------------------------------------------------------------------------------------
# eSpeak NG with phoneme events (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_POS_CHARACTER, _CHARS_UTF8 = 1, 1
_RATE = 1  # espeakRATE


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):  # espeak_EVENT
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class PhonemeSpeaker:
    """libespeak-ng of the espeakng-loader wheel, started with IPA phoneme events (its own process-wide
    engine: do not mix with embedtalk_sdk.serve.tts.EspeakTTS, which starts it without events)."""

    def __init__(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        data_parent = str(Path(espeakng_loader.get_data_path()).parent).encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent,
                                     _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize returned {rate}")
        self.lib, self.rate = lib, int(rate)
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, str]] = []
        self._callback = _CALLBACK(self._collect)  # kept alive: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n: int, events) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events and events[i].type != _EVENT_LIST_TERMINATED:
            e = events[i]
            if e.type == _EVENT_PHONEME:
                name = bytes(e.id.string).split(b"\0")[0].decode("utf-8", "ignore")  # 8 bytes, may be cut
                self._events.append((int(e.audio_position), name))
            i += 1
        return 0

    def speak(self, voice: str, text: str, words_per_minute: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """(int16 samples at self.rate, [(start ms, IPA phoneme ('' for a pause))]) of one text."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_RATE, int(words_per_minute), 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        err = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        if err != 0 or not self._chunks:
            raise RuntimeError(f"espeak-ng could not speak {text[:40]!r} with {voice} (error {err})")
        return np.concatenate(self._chunks), list(self._events)


# ---------------------------------------------------------------------------------------------
# Phonemes -> mouth opening
VOWEL_OPENING = {
    **dict.fromkeys("aɑæɒɶ", 1.0), "ɐ": 0.8,
    **dict.fromkeys("ɛœɔʌ", 0.7), **dict.fromkeys("ɜɞ", 0.6),
    **dict.fromkeys("eoɤ", 0.5), **dict.fromkeys("øəɘɵɚɝ", 0.45),
    **dict.fromkeys("ɪʏʊᵻ", 0.3),
    **dict.fromkeys("iyuɨʉɯ", 0.2),
}
BILABIAL = set("pbmɸβʙ")  # lips closed: 0
LABIAL = set("fvɱʋw")  # lip to teeth, or rounded and narrow: 0.1
CONSONANT = 0.15


def _letters(phoneme: str) -> str:
    """The base letters of an IPA string: stress, length, tone and diacritics dropped (NFD, Mn/Lm/Sk)."""
    return "".join(c for c in unicodedata.normalize("NFD", phoneme)
                   if unicodedata.category(c) in ("Ll", "Lu", "Lo") and c not in "ˈˌː")


def openness(phoneme: str) -> list[float]:
    """Mouth openings over a phoneme's duration (one value per vowel of a diphthong, else one)."""
    letters = _letters(phoneme)
    vowels = [VOWEL_OPENING[c] for c in letters if c in VOWEL_OPENING]
    if vowels:
        return vowels
    if not letters or BILABIAL & set(letters):
        return [0.0]
    if LABIAL & set(letters):
        return [0.1]
    return [CONSONANT]


def mouth_target(events: list[tuple[float, str]], seconds: float, n_frames: int, smooth_ms: float = SMOOTH_MS
                 ) -> np.ndarray:
    """[n_frames] mouth opening at frame n's time (40 n ms): the phonemes' openings on a 1 ms grid
    (each held until the next event), Gaussian-smoothed."""
    from scipy.ndimage import gaussian_filter1d

    n_ms = int(np.ceil(seconds * 1000)) + 1
    grid = np.zeros(n_ms)
    for (t, ph), (t_next, _) in zip(events, [*events[1:], (float(n_ms), "")]):
        a, b = int(round(t)), int(round(t_next))
        if b <= a:
            continue
        values = openness(ph)
        cuts = np.linspace(a, b, len(values) + 1).round().astype(int)
        for v, lo, hi in zip(values, cuts[:-1], cuts[1:]):
            grid[lo:hi] = v
    grid = gaussian_filter1d(grid, smooth_ms, mode="nearest")
    at = np.minimum((np.arange(n_frames) * 1000 / FPS).round().astype(int), n_ms - 1)
    return grid[at]


# ---------------------------------------------------------------------------------------------
# Out-of-fold ridge: benchmarks/audio_mouth_ceiling.py's when it imports, else the same here.
def _ridge_helpers():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from audio_mouth_ceiling import RidgeCV, out_of_fold, scores  # type: ignore

        return RidgeCV, out_of_fold, scores, "benchmarks/audio_mouth_ceiling.py"
    except Exception:  # noqa: BLE001 -- absent, or mid-edit by someone else: use the local copy
        return _LocalRidgeCV, _local_out_of_fold, _local_scores, "benchmarks/language_proxy.py (local copy)"
    finally:
        sys.path.pop(0)


LAMBDAS = (1.0, 10.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
FOLDS, GAP = 5, 8


class _Ridge:
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.mean, self.std, self.y_mean = x.mean(0), x.std(0) + 1e-6, float(y.mean())
        u, self.s, self.vt = np.linalg.svd((x - self.mean) / self.std, full_matrices=False)
        self.uty = u.T @ (y - self.y_mean)

    def predict(self, x: np.ndarray, lam: float) -> np.ndarray:
        return (x - self.mean) / self.std @ (self.vt.T @ (self.s / (self.s ** 2 + lam) * self.uty)) + self.y_mean


def _train_part(ids: np.ndarray, test: np.ndarray, gap: int) -> np.ndarray:
    return ids[(ids < test.min() - gap) | (ids > test.max() + gap)]


class _LocalRidgeCV:
    def __init__(self, x: np.ndarray, y: np.ndarray, lambdas=LAMBDAS, folds: int = FOLDS, gap: int = GAP) -> None:
        self.x, self.y, self.lambdas, self.folds, self.gap, self.chosen = x, y, lambdas, folds, gap, []

    def __call__(self, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        pooled: dict[float, list[np.ndarray]] = {lam: [] for lam in self.lambdas}
        inner = np.array_split(train, self.folds)
        for t in inner:
            part = _train_part(train, t, self.gap)
            ridge = _Ridge(self.x[part], self.y[part])
            for lam in self.lambdas:
                p = ridge.predict(self.x[t], lam)
                pooled[lam].append(p - p.mean())
        truth = np.concatenate([self.y[t] for t in inner])
        lam = max(self.lambdas, key=lambda k: pearson(np.concatenate(pooled[k]), truth))
        self.chosen.append(lam)
        return _Ridge(self.x[train], self.y[train]).predict(self.x[test], lam)


def _local_out_of_fold(n: int, fit, folds: int = FOLDS, gap: int = GAP):
    ids = np.arange(n)
    tests = np.array_split(ids, folds)
    pred = np.empty(n)
    for test in tests:
        pred[test] = fit(_train_part(ids, test, gap), test)
    return pred, tests


def _local_scores(pred: np.ndarray, truth: np.ndarray, tests=None) -> dict:
    out = {"corr": round(pearson(pred, truth), 4), "amp": round(float(pred.std() / truth.std()), 4)}
    if tests is not None:
        out["fold_corr"] = [round(pearson(pred[t], truth[t]), 4) for t in tests]
    return out


# ---------------------------------------------------------------------------------------------
def speak_language(speaker: PhonemeSpeaker, voice: str, paragraphs: list[str], wpm: int, seconds: float
                   ) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """(float32 16 kHz samples, [(start ms, phoneme)]) of the paragraphs spoken one after another,
    cut to `seconds` (every language gets the same length, so the same number of frames)."""
    pieces, events, offset = [], [], 0
    for text in paragraphs:
        if offset >= seconds * speaker.rate:
            break
        samples, evs = speaker.speak(voice, text, wpm)
        events += [(offset * 1000 / speaker.rate + t, ph) for t, ph in evs]
        pieces.append(samples)
        offset += samples.size
    audio = prepare_audio(np.concatenate(pieces), speaker.rate, 16000, name=voice)[: int(seconds * 16000)]
    return audio, [(t, ph) for t, ph in events if t < seconds * 1000]


def measure(voice: str, audio: np.ndarray, events: list[tuple[float, str]], phonetic, ridge, args) -> dict:
    RidgeCV, out_of_fold, scores = ridge
    seconds = audio.size / 16000
    n = n_video_frames(audio.size)
    y = mouth_target(events, seconds, n)
    mel = MelEncoder().features(audio)
    ph = phonetic.features(audio)
    m = min(len(mel), len(ph))
    loud = np.log(np.exp(mel[:m].astype(np.float64)).sum(1, keepdims=True)).astype(np.float32)
    rows = {"loudness": loud, "mel": mel[:m], "phonetic": ph[:m], "mel+phonetic": np.concatenate([mel[:m], ph[:m]], 1)}
    out: dict = {"voice": voice, "seconds": round(seconds, 1), "frames": n, "phonemes": len(events)}
    # Sanity: the target against the loudness at lags (frame n's loudness row is 2n).
    lf = loud[np.minimum(2 * np.arange(n), m - 1), 0]
    lags = {lag: pearson(y[max(0, lag):n + min(0, lag)], lf[max(0, -lag):n - max(0, lag)]) for lag in range(-4, 5)}
    out["lag_frames"] = max(lags, key=lags.get)
    # How sure the English model is on speech rows (rows whose centre falls in a phoneme, not a pause).
    speech = np.zeros(m, bool)
    for (t, p), (t2, _) in zip(events, [*events[1:], (seconds * 1000, "")]):
        if p:
            speech[int(np.ceil(t / 20)):int(np.ceil(t2 / 20))] = True
    out["phone_max_post"] = round(float(ph[:m][speech[:m]].max(1).mean()), 3)
    mapped = {c for _, p in events for c in _letters(p)}
    out["consonant_letters"] = "".join(sorted(c for c in mapped if c not in VOWEL_OPENING))
    for name in args.feature_sets:
        x = frame_windows(rows[name], n, window=WINDOW).reshape(n, -1).astype(np.float64)
        fit = RidgeCV(x, y, LAMBDAS, FOLDS, GAP)
        pred, tests = out_of_fold(n, fit, FOLDS, GAP)
        out[name] = {**scores(pred, y, tests), "fold_lambda": list(fit.chosen)}
    return out


def paired_difference(r: dict, a: str = "phonetic", b: str = "mel") -> tuple[float, float]:
    """(mean, standard error) over the 5 folds of corr(a) - corr(b): the two sets' folds are the same frames."""
    d = np.subtract(r[a]["fold_corr"], r[b]["fold_corr"])
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def table(report: dict) -> str:
    """One line per language: corr / amp per feature set, phonetic - mel per fold (mean +- s.e.), lag, sureness."""
    sets = report["feature_sets"]
    both = {"phonetic", "mel"} <= set(sets)
    head = (f"{'language':<8} {'s':>5}  " + "  ".join(f"{s:>18}" for s in sets)
            + ("   phon-mel (folds)" if both else "") + "  lag  maxpost")
    lines = ["OOF ridge on the eSpeak mouth target: corr / amp (std pred / std target)", head]
    for r in report["languages"]:
        cells = "  ".join(f"{r[s]['corr']:>10.3f} / {r[s]['amp']:.2f}" for s in sets)
        diff = "  {:>+7.3f} +- {:.3f}".format(*paired_difference(r)) if both else ""
        lines.append(f"{r['voice']:<8} {r['seconds']:>5.1f}  {cells}{diff}  {r['lag_frames']:>3d}  "
                     f"{r['phone_max_post']:>7.3f}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Left: OOF correlation per language and feature set; right: phonetic - mel per fold (mean +- s.e.)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = [r["voice"] for r in report["languages"]]
    sets = report["feature_sets"]
    x = np.arange(len(langs))
    w = 0.8 / len(sets)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(max(9.0, 1.3 * len(langs)), 3.8),
                                  gridspec_kw={"width_ratios": [2.2, 1]})
    for i, s in enumerate(sets):
        ax.bar(x + (i - (len(sets) - 1) / 2) * w, [r[s]["corr"] for r in report["languages"]], w, label=s)
    ax.set_xticks(x, langs)
    ax.set_ylabel("OOF correlation with the mouth target")
    ax.set_ylim(0, 1)
    ax.set_title("eSpeak NG voices: ridge from 16-row audio windows to the phoneme-timeline mouth", fontsize=9)
    ax.legend(fontsize=8, ncol=len(sets), loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    if {"phonetic", "mel"} <= set(sets):
        d = np.array([paired_difference(r) for r in report["languages"]])
        ax2.bar(x, d[:, 0], 0.6, yerr=d[:, 1], color=["tab:green" if v >= 0 else "tab:orange" for v in d[:, 0]])
        ax2.axhline(0, color="k", lw=0.8)
        ax2.set_xticks(x, langs, rotation=60, fontsize=8)
        ax2.set_title("phonetic - mel correlation (5 folds: mean +- s.e.)", fontsize=9)
        ax2.grid(axis="y", alpha=0.3)
    else:
        ax2.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--languages", default=",".join(LANGUAGES), help="eSpeak voices, comma separated")
    parser.add_argument("--feature-sets", default=",".join(FEATURE_SETS))
    parser.add_argument("--rate", type=int, default=160, help="words per minute")
    parser.add_argument("--seconds", type=float, default=50.0, help="speech per language (the text gives 57-83 s)")
    parser.add_argument("--save-audio", type=Path, help="a folder for each language's wav and phoneme timeline")
    parser.add_argument("-o", "--out", type=Path, default=Path("language_proxy.json"))
    parser.add_argument("--plot", type=Path, help="bar chart (default: the JSON's name with .png)")
    args = parser.parse_args()
    args.feature_sets = args.feature_sets.split(",")
    from embedtalk_sdk.audio.features import phonetic_encoder

    RidgeCV, out_of_fold, scores, where = _ridge_helpers()
    speaker, phonetic = PhonemeSpeaker(), phonetic_encoder(mel=None)
    report = {"words_per_minute": args.rate, "seconds": args.seconds, "smooth_ms": SMOOTH_MS, "window": WINDOW,
              "folds": FOLDS, "gap": GAP, "ridge": where, "feature_sets": args.feature_sets, "languages": []}
    for voice in args.languages.split(","):
        t = time.perf_counter()
        espeak_voice, text = LANGUAGES[voice]
        audio, events = speak_language(speaker, espeak_voice, TEXTS[text], args.rate, args.seconds)
        if args.save_audio:
            import soundfile as sf

            args.save_audio.mkdir(parents=True, exist_ok=True)
            sf.write(args.save_audio / f"{voice}.wav", audio, 16000)
            (args.save_audio / f"{voice}.phonemes.tsv").write_text("".join(f"{t:.0f}\t{p}\n" for t, p in events))
        r = measure(voice, audio, events, phonetic, (RidgeCV, out_of_fold, scores), args)
        r["compute_s"] = round(time.perf_counter() - t, 1)
        report["languages"].append(r)
        print(f"{voice}: {r['seconds']} s, " + ", ".join(f"{s} {r[s]['corr']:.3f}" for s in args.feature_sets)
              + f" ({r['compute_s']} s)", flush=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    plot(report, args.plot or args.out.with_suffix(".png"))
    print(table(report))


if __name__ == "__main__":
    main()
