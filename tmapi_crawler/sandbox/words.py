"""The sandbox's word tables in every API language, and the titles and companies made of them.

Tables of text rather than generated strings so every language reads plausibly; titles and
company names are precomputed per language because formatting them per item was the
sandbox's hottest path.
"""

from __future__ import annotations

import json

from tmapi_crawler import api

#: Column order of the translation tables below.
_COLUMNS = ("en", "zh", "ru", "vi", "ja", "ko")
if set(_COLUMNS) != set(api.LANGUAGES):
    raise ImportError("the sandbox's translation tables do not cover api.LANGUAGES")

ADJECTIVES = (
    ("portable", "便携", "портативный", "di động", "携帯用", "휴대용"),
    ("waterproof", "防水", "водонепроницаемый", "chống nước", "防水", "방수"),
    ("wireless", "无线", "беспроводной", "không dây", "ワイヤレス", "무선"),
    ("stainless steel", "不锈钢", "нержавеющий", "inox", "ステンレス", "스테인리스"),
    ("foldable", "折叠", "складной", "gấp gọn", "折りたたみ", "접이식"),
    ("mini", "迷你", "мини", "mini", "ミニ", "미니"),
    ("vintage", "复古", "винтажный", "cổ điển", "ヴィンテージ", "빈티지"),
    ("cotton", "纯棉", "хлопковый", "cotton", "綿", "면"),
    ("LED", "LED", "светодиодный", "đèn LED", "LED", "LED"),
    ("kids", "儿童", "детский", "trẻ em", "子供用", "어린이"),
    ("heart-shaped", "心形", "в форме сердца", "hình trái tim", "ハート型", "하트모양"),
    ("rechargeable", "充电", "перезаряжаемый", "sạc lại", "充電式", "충전식"),
    ("silicone", "硅胶", "силиконовый", "silicon", "シリコン", "실리콘"),
    ("wooden", "木制", "деревянный", "bằng gỗ", "木製", "나무"),
    ("magnetic", "磁性", "магнитный", "từ tính", "マグネット", "자석"),
    ("summer", "夏季", "летний", "mùa hè", "夏用", "여름"),
)
NOUNS = (
    ("sunglasses", "太阳镜", "солнцезащитные очки", "kính râm", "サングラス", "선글라스"),
    ("phone case", "手机壳", "чехол для телефона", "ốp điện thoại", "スマホケース",
     "휴대폰 케이스"),
    ("water bottle", "水杯", "бутылка для воды", "bình nước", "水筒", "물병"),
    ("backpack", "背包", "рюкзак", "ba lô", "リュック", "백팩"),
    ("desk lamp", "台灯", "настольная лампа", "đèn bàn", "デスクライト", "스탠드"),
    ("hair clip", "发夹", "заколка", "kẹp tóc", "ヘアクリップ", "머리핀"),
    ("storage box", "收纳盒", "коробка для хранения", "hộp đựng đồ", "収納ボックス", "수납함"),
    ("T-shirt", "T恤", "футболка", "áo phông", "Tシャツ", "티셔츠"),
    ("earphones", "耳机", "наушники", "tai nghe", "イヤホン", "이어폰"),
    ("kitchen knife", "菜刀", "кухонный нож", "dao bếp", "包丁", "식칼"),
    ("toy car", "玩具车", "игрушечная машинка", "xe đồ chơi", "おもちゃの車", "장난감 자동차"),
    ("umbrella", "雨伞", "зонт", "ô che mưa", "傘", "우산"),
    ("socks", "袜子", "носки", "tất", "靴下", "양말"),
    ("keychain", "钥匙扣", "брелок", "móc khóa", "キーホルダー", "열쇠고리"),
    ("mug", "马克杯", "кружка", "cốc", "マグカップ", "머그컵"),
    ("electric fan", "风扇", "вентилятор", "quạt điện", "扇風機", "선풍기"),
)
BRANDS = (
    ("Bright Star", "明星", "Яркая звезда", "Sao Sáng", "明星", "밝은별"),
    ("Golden Sun", "金阳", "Золотое солнце", "Mặt Trời Vàng", "金陽", "황금태양"),
    ("Happy Home", "乐家", "Счастливый дом", "Nhà Vui", "楽家", "행복한집"),
    ("Sea Breeze", "海风", "Морской бриз", "Gió Biển", "海風", "바닷바람"),
    ("Red Maple", "红枫", "Красный клён", "Phong Đỏ", "紅楓", "붉은단풍"),
    ("Jade River", "玉河", "Нефритовая река", "Sông Ngọc", "玉河", "옥강"),
    ("Swift Crane", "飞鹤", "Быстрый журавль", "Hạc Bay", "飛鶴", "나는학"),
    ("Blue Peak", "蓝峰", "Синяя вершина", "Đỉnh Xanh", "藍峰", "푸른봉우리"),
)
#: (province, city) pairs, the way `delivery_info.area_from` spells them.
AREAS = (
    (("Zhejiang", "Jinhua"), ("浙江", "金华市"), ("Чжэцзян", "Цзиньхуа"),
     ("Chiết Giang", "Kim Hoa"), ("浙江省", "金華市"), ("저장성", "진화시")),
    (("Zhejiang", "Taizhou"), ("浙江", "台州市"), ("Чжэцзян", "Тайчжоу"),
     ("Chiết Giang", "Thai Châu"), ("浙江省", "台州市"), ("저장성", "타이저우시")),
    (("Guangdong", "Guangzhou"), ("广东", "广州市"), ("Гуандун", "Гуанчжоу"),
     ("Quảng Đông", "Quảng Châu"), ("広東省", "広州市"), ("광둥성", "광저우시")),
    (("Guangdong", "Shenzhen"), ("广东", "深圳市"), ("Гуандун", "Шэньчжэнь"),
     ("Quảng Đông", "Thâm Quyến"), ("広東省", "深圳市"), ("광둥성", "선전시")),
    (("Jiangsu", "Suzhou"), ("江苏", "苏州市"), ("Цзянсу", "Сучжоу"),
     ("Giang Tô", "Tô Châu"), ("江蘇省", "蘇州市"), ("장쑤성", "쑤저우시")),
    (("Fujian", "Xiamen"), ("福建", "厦门市"), ("Фуцзянь", "Сямынь"),
     ("Phúc Kiến", "Hạ Môn"), ("福建省", "厦門市"), ("푸젠성", "샤먼시")),
    (("Shandong", "Qingdao"), ("山东", "青岛市"), ("Шаньдун", "Циндао"),
     ("Sơn Đông", "Thanh Đảo"), ("山東省", "青島市"), ("산둥성", "칭다오시")),
    (("Hebei", "Baoding"), ("河北", "保定市"), ("Хэбэй", "Баодин"),
     ("Hà Bắc", "Bảo Định"), ("河北省", "保定市"), ("허베이성", "바오딩시")),
)
_TITLE_FORMATS = dict(zip(_COLUMNS, (
    "{model} {a1} {a2} {noun}", "{model}{a1}{a2}{noun}", "{a1} {a2} {noun} {model}",
    "{noun} {a1} {a2} {model}", "{model} {a1}{a2}{noun}", "{model} {a1} {a2} {noun}",
), strict=True))
_COMPANY_FORMATS = dict(zip(_COLUMNS, (
    "{city} {brand} Trading Co., Ltd.", "{city}{brand}贸易有限公司",
    "Торговая компания «{brand}» ({city})", "Công ty TNHH Thương mại {brand} {city}",
    "{city}{brand}貿易有限公司", "{city} {brand} 무역유한회사",
), strict=True))
COLUMN = {language: index for index, language in enumerate(_COLUMNS)}


def _check_tables() -> None:
    """`items.item_json` pastes table text into JSON verbatim: right only if none needs escaping."""
    texts = [text for table in (ADJECTIVES, NOUNS, BRANDS) for row in table for text in row]
    texts += [text for row in AREAS for pair in row for text in pair]
    texts += [*_TITLE_FORMATS.values(), *_COMPANY_FORMATS.values()]
    if any(json.dumps(text, ensure_ascii=False) != f'"{text}"' for text in texts):
        raise ImportError("a sandbox text table entry needs JSON escaping")


_check_tables()


def _title_parts(column: int) -> list[tuple[str, str]]:
    """Every title in one language as (text before, text after) the model number.

    Precomputed (16 x 16 x 16 per language) because formatting titles per item was the
    sandbox's hottest path.
    """
    template = _TITLE_FORMATS[_COLUMNS[column]]
    parts = []
    for a1 in ADJECTIVES:
        for a2 in ADJECTIVES:
            for noun in NOUNS:
                text = template.format(model="\0", a1=a1[column], a2=a2[column],
                                       noun=noun[column])
                before, _, after = text.partition("\0")
                parts.append((before, after))
    return parts


TITLE_PARTS = [_title_parts(column) for column in range(len(_COLUMNS))]
COMPANIES = [
    [_COMPANY_FORMATS[language].format(city=area[column][1], brand=brand[column])
     for area in AREAS for brand in BRANDS]
    for column, language in enumerate(_COLUMNS)
]
AREA_JSON = [[json.dumps(area[column], ensure_ascii=False, separators=(",", ":"))
               for area in AREAS] for column in range(len(_COLUMNS))]
