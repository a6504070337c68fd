"""Deterministic, deliberately messy records for the three demo department systems.

Pure: `generate(seed, customers)` draws everything from one `random.Random(seed)`, no I/O.
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from functools import cached_property

__all__ = [
    "CrmCustomer",
    "CrmOpportunity",
    "CrmOrder",
    "CrmRep",
    "DemoWorld",
    "HelpdeskRequester",
    "HelpdeskTicket",
    "MarketingConsent",
    "MarketingContact",
    "MarketingRecords",
    "Person",
    "SalesRecords",
    "ServiceRecords",
    "generate",
    "national_id_check_char",
]

# --- the records, one type per system ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CrmRep:
    id: str  # "rep-07"
    name: str
    is_manager: bool


@dataclass(frozen=True, slots=True)
class CrmCustomer:
    id: int  # from 10001, in no relation to person order
    full_name: str
    email: str  # as typed into the CRM: mixed case, stray spaces
    phone: str  # "+86 138 0013 8000" or "138-0013-8000"
    national_id: str
    address: str
    lifetime_value: Decimal  # sum of this record's order totals, 2 decimals
    owner_rep: str
    created_at: datetime  # aware, UTC


@dataclass(frozen=True, slots=True)
class CrmOrder:
    id: str  # "SO-" + 7 digits, increasing with placed_at
    customer_id: int
    placed_at: datetime  # aware, UTC
    total: Decimal
    status: str  # paid | shipped | delivered | refunded | cancelled


@dataclass(frozen=True, slots=True)
class CrmOpportunity:
    id: str  # "OP-" + 6 digits
    customer_id: int
    owner_rep: str
    stage: str  # prospecting | proposal | negotiation | won | lost
    amount: Decimal
    updated_at: datetime  # aware, UTC


@dataclass(frozen=True, slots=True)
class HelpdeskRequester:
    id: str  # "req_" + 10 lowercase hex
    email: str
    phone: str  # 11 plain digits
    name: str


@dataclass(frozen=True, slots=True)
class HelpdeskTicket:
    id: str  # "T-" + 6 digits, increasing with created_at
    requester_id: str
    subject: str
    status: str  # open | pending | closed
    csat: int | None
    created_at: str  # ISO 8601 with +08:00
    closed_at: str | None


@dataclass(frozen=True, slots=True)
class MarketingConsent:
    channel: str  # email | sms | phone
    granted: bool
    updated_at: str  # ISO 8601 UTC ending in "Z"


@dataclass(frozen=True, slots=True)
class MarketingContact:
    id: str  # "MC-" + 6 digits
    email: str | None
    phone: str | None  # E.164, "+8613800138000"
    segment: str  # vip | loyal | new | dormant | churn-risk
    consents: tuple[MarketingConsent, ...]


@dataclass(frozen=True, slots=True)
class SalesRecords:
    customers: tuple[CrmCustomer, ...]
    orders: tuple[CrmOrder, ...]
    opportunities: tuple[CrmOpportunity, ...]
    reps: tuple[CrmRep, ...]


@dataclass(frozen=True, slots=True)
class ServiceRecords:
    requesters: tuple[HelpdeskRequester, ...]
    tickets: tuple[HelpdeskTicket, ...]


@dataclass(frozen=True, slots=True)
class MarketingRecords:
    contacts: tuple[MarketingContact, ...]


@dataclass(frozen=True, slots=True)
class Person:
    """The truth behind the records: who a person is and which record is theirs in each system."""

    index: int
    name: str
    email: str  # clean: trimmed, lowercased
    phone: str  # 11 digits
    national_id: str
    birth_date: date
    address: str
    city: str  # what an address mask shows: "北京市" or "Beijing"
    owner_rep: str | None  # None for walk-ins
    sales_ids: tuple[int, ...]  # () for walk-ins; a duplicated customer: original id, then dup
    requester_id: str | None
    contact_id: str | None
    marketing_conflict: bool  # marketing holds this email with a different phone

    @property
    def is_customer(self) -> bool:
        return bool(self.sales_ids)


@dataclass(frozen=True)
class DemoWorld:
    """Everything `generate` made: each system's own records plus the true persons."""

    seed: int
    persons: tuple[Person, ...]
    sales: SalesRecords
    service: ServiceRecords
    marketing: MarketingRecords

    # Lookups for tests; cached_property writes the instance dict, so frozen still holds.
    @cached_property
    def _by_sales_id(self) -> dict[int, Person]:
        return {sid: p for p in self.persons for sid in p.sales_ids}

    @cached_property
    def _by_requester_id(self) -> dict[str, Person]:
        return {p.requester_id: p for p in self.persons if p.requester_id}

    @cached_property
    def _by_contact_id(self) -> dict[str, Person]:
        return {p.contact_id: p for p in self.persons if p.contact_id}

    @cached_property
    def _by_email(self) -> dict[str, Person]:
        return {p.email: p for p in self.persons}

    def person_by_sales_id(self, customer_id: int) -> Person | None:
        return self._by_sales_id.get(customer_id)

    def person_by_requester_id(self, requester_id: str) -> Person | None:
        return self._by_requester_id.get(requester_id)

    def person_by_contact_id(self, contact_id: str) -> Person | None:
        return self._by_contact_id.get(contact_id)

    def person_by_email(self, email: str) -> Person | None:
        """Matches any spelling of the email (case, surrounding spaces)."""
        return self._by_email.get(email.strip().lower())


# --- reference tables ------------------------------------------------------------------------

_SURNAMES: tuple[tuple[str, str], ...] = (
    ("张", "zhang"), ("王", "wang"), ("李", "li"), ("刘", "liu"), ("陈", "chen"),
    ("杨", "yang"), ("黄", "huang"), ("赵", "zhao"), ("吴", "wu"), ("周", "zhou"),
    ("徐", "xu"), ("孙", "sun"), ("马", "ma"), ("朱", "zhu"), ("胡", "hu"),
    ("郭", "guo"), ("何", "he"), ("林", "lin"), ("高", "gao"), ("罗", "luo"),
    ("郑", "zheng"), ("梁", "liang"), ("谢", "xie"), ("宋", "song"), ("唐", "tang"),
    ("韩", "han"), ("冯", "feng"), ("邓", "deng"), ("曹", "cao"), ("彭", "peng"),
    ("欧阳", "ouyang"), ("司马", "sima"), ("诸葛", "zhuge"), ("上官", "shangguan"),
)  # fmt: skip

_GIVEN_NAMES: tuple[tuple[str, str], ...] = (
    ("伟", "wei"), ("芳", "fang"), ("娜", "na"), ("敏", "min"), ("静", "jing"),
    ("丽", "li"), ("强", "qiang"), ("磊", "lei"), ("军", "jun"), ("洋", "yang"),
    ("勇", "yong"), ("艳", "yan"), ("杰", "jie"), ("娟", "juan"), ("涛", "tao"),
    ("明", "ming"), ("超", "chao"), ("秀英", "xiuying"), ("霞", "xia"), ("平", "ping"),
    ("刚", "gang"), ("桂英", "guiying"), ("娜娜", "nana"), ("子涵", "zihan"),
    ("浩然", "haoran"), ("欣怡", "xinyi"), ("宇轩", "yuxuan"), ("梓萱", "zixuan"),
    ("建国", "jianguo"), ("志强", "zhiqiang"), ("晓明", "xiaoming"), ("丹", "dan"),
    ("鑫", "xin"), ("婷", "ting"), ("雪", "xue"), ("琳", "lin"), ("思远", "siyuan"),
    ("一诺", "yinuo"),
)  # fmt: skip

_WESTERN_FIRST: tuple[str, ...] = (
    "Anna", "José", "Sean", "Maria", "Jean-Luc", "Émilie", "Lars", "Kenji", "Priya",
    "David", "Sarah", "Michael", "Olivia", "Lukas", "Sofía", "Zoë", "Björn", "Chloé",
    "Ahmed", "Fatima", "Thomas", "Laura", "Daniel", "Emma", "Marco", "Giulia",
    "Hiroshi", "Yuki", "Min-jun", "Carlos", "Ana", "Peter", "Katarzyna", "Søren",
    "Aoife", "Raj", "Ananya", "James", "Elena", "Noah",
)  # fmt: skip

_WESTERN_LAST: tuple[str, ...] = (
    "Müller", "García", "O'Brien", "Smith", "Johnson", "Rossi", "Martin", "Dubois",
    "Nielsen", "Tanaka", "Sharma", "Brown", "Wilson", "Schmidt", "Hernández", "Clarke",
    "Andersson", "Bernard", "Hassan", "Al-Sayed", "Kowalski", "Novák", "Jensen", "Kim",
    "Silva", "Costa", "Moreau", "Fischer", "Weber", "van der Berg", "De Luca",
    "McDonald", "Nguyen", "Suzuki", "Yamamoto", "Petrović",
)  # fmt: skip

_EMAIL_DOMAINS = (
    "example.com", "example.cn", "example.org", "example.net", "mail.example.com",
    "corp.example.cn",
)  # fmt: skip

_Place = tuple[str, str, str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]


def _place(city: str, city_en: str, postcode: str, districts: str, streets: str) -> _Place:
    """One city: "朝阳区=Chaoyang District; ..." pairs each Chinese name with its Latin form."""

    def pairs(text: str) -> tuple[tuple[str, str], ...]:
        return tuple((cn, en) for cn, _, en in (item.partition("=") for item in text.split("; ")))

    return city, city_en, postcode, pairs(districts), pairs(streets)


# A street may contain 市 (环市东路) on purpose: the city is the text up to the FIRST 市.
_CITIES: tuple[_Place, ...] = (
    _place(
        "北京", "Beijing", "100",
        "朝阳区=Chaoyang District; 海淀区=Haidian District; 东城区=Dongcheng District",
        "建国路=Jianguo Road; 中关村大街=Zhongguancun Street; 三里屯路=Sanlitun Road",
    ),
    _place(
        "上海", "Shanghai", "200",
        "浦东新区=Pudong New Area; 黄浦区=Huangpu District; 静安区=Jing'an District",
        "世纪大道=Century Avenue; 南京东路=East Nanjing Road; 淮海中路=Middle Huaihai Road",
    ),
    _place(
        "广州", "Guangzhou", "510",
        "天河区=Tianhe District; 越秀区=Yuexiu District; 海珠区=Haizhu District",
        "天河路=Tianhe Road; 环市东路=East Huanshi Road; 中山五路=Zhongshan 5th Road",
    ),
    _place(
        "深圳", "Shenzhen", "518",
        "南山区=Nanshan District; 福田区=Futian District; 罗湖区=Luohu District",
        "深南大道=Shennan Avenue; 科苑路=Keyuan Road; 华强北路=Huaqiang North Road",
    ),
    _place(
        "杭州", "Hangzhou", "310",
        "西湖区=Xihu District; 上城区=Shangcheng District; 滨江区=Binjiang District",
        "文三路=Wensan Road; 延安路=Yan'an Road; 江南大道=Jiangnan Avenue",
    ),
    _place(
        "成都", "Chengdu", "610",
        "武侯区=Wuhou District; 锦江区=Jinjiang District; 青羊区=Qingyang District",
        "人民南路=South Renmin Road; 春熙路=Chunxi Road; 天府大道=Tianfu Avenue",
    ),
    _place(
        "南京", "Nanjing", "210",
        "玄武区=Xuanwu District; 鼓楼区=Gulou District",
        "中山路=Zhongshan Road; 北京东路=East Beijing Road",
    ),
    _place(
        "武汉", "Wuhan", "430",
        "武昌区=Wuchang District; 江汉区=Jianghan District",
        "中南路=Zhongnan Road; 解放大道=Jiefang Avenue",
    ),
    _place(
        "西安", "Xi'an", "710",
        "雁塔区=Yanta District; 碑林区=Beilin District",
        "长安南路=South Chang'an Road; 东大街=East Street",
    ),
    _place(
        "重庆", "Chongqing", "400",
        "渝中区=Yuzhong District; 江北区=Jiangbei District",
        "民族路=Minzu Road; 建新北路=North Jianxin Road",
    ),
    _place(
        "天津", "Tianjin", "300",
        "和平区=Heping District; 河西区=Hexi District",
        "南京路=Nanjing Road; 友谊路=Youyi Road",
    ),
    _place(
        "苏州", "Suzhou", "215",
        "姑苏区=Gusu District; 工业园区=Suzhou Industrial Park",
        "干将路=Ganjiang Road; 星湖街=Xinghu Street",
    ),
)  # fmt: skip

# Real county-level codes, so a region lookup table on the gateway side would find them.
_REGION_CODES = (
    "110101", "110105", "110108", "310101", "310104", "310115", "440104", "440106",
    "440304", "440305", "330102", "330106", "510104", "510107", "320102", "420106",
    "610113", "500103", "120101", "370102", "350203", "430102", "410105", "210102",
    "230103", "530102", "450103",
)  # fmt: skip

_MOBILE_PREFIXES = (
    "130", "131", "132", "133", "135", "136", "137", "138", "139", "147", "150", "151",
    "152", "153", "155", "156", "157", "158", "159", "166", "173", "177", "180", "181",
    "182", "183", "185", "186", "187", "188", "189", "191", "198", "199",
)  # fmt: skip

_REP_NAMES = (
    "陈静", "Li Ming", "王磊", "Sarah Chen", "刘洋", "赵敏", "Kevin Wu", "孙丽", "周杰",
    "Emily Zhao", "吴涛", "黄婷", "Jason Lin", "郑雪", "马超", "Grace Huang", "何平",
    "林琳", "Tony Xu", "高鑫",
)  # fmt: skip

_TICKET_SUBJECTS = (
    "Order has not arrived yet",
    "订单还没有发货",
    "Wrong item delivered",
    "收到的商品有破损",
    "Request a refund",
    "申请退款",
    "Cannot log in to my account",
    "无法登录账户",
    "Change delivery address",
    "修改收货地址",
    "Invoice needed for order",
    "需要开具发票",
    "Payment charged twice",
    "重复扣款",
    "Product stopped working after a week",
    "How do I cancel my subscription?",
    "Warranty claim",
    "发票抬头错误",
    "Coupon code not accepted",
    "Update my phone number",
    "Question about membership points",
    "快递一直显示运输中",
)

_SEGMENTS = ("vip", "loyal", "new", "dormant", "churn-risk")
_SEGMENT_WEIGHTS = (8, 25, 22, 25, 20)
_CHANNELS = ("email", "sms", "phone")

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"

# Fixed ends, so the data never depends on the day it is generated.
_CUSTOMERS_FROM = datetime(2019, 1, 1, tzinfo=UTC)
_CUSTOMERS_UNTIL = datetime(2024, 12, 31, tzinfo=UTC)
_ACTIVITY_FROM = datetime(2022, 1, 1, tzinfo=UTC)
_ACTIVITY_UNTIL = datetime(2026, 11, 1, tzinfo=UTC)
_CST = timezone(timedelta(hours=8))

# Orders per customer, 0..12: mean 4.97, so ~5,000 orders for 1,000 customers.
_ORDERS_PER_CUSTOMER = (6, 8, 10, 12, 12, 11, 10, 9, 7, 6, 4, 3, 2)
# Tickets per requester, 0..6: mean 2.95.
_TICKETS_PER_REQUESTER = (12, 14, 16, 18, 16, 13, 11)


def national_id_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of an 18-character PRC resident id."""
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


# --- generation ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Draft:
    """A person while the systems are being filled in; frozen into `Person` at the end."""

    index: int
    name: str
    email: str
    phone: str
    national_id: str
    birth_date: date
    address: str
    city: str
    owner_rep: str | None
    sales_ids: list[int] = field(default_factory=list)
    requester_id: str | None = None
    contact_id: str | None = None
    marketing_conflict: bool = False


def generate(seed: int = 42, customers: int = 1000) -> DemoWorld:
    """Build the demo world: `customers` sales customers plus ~2% helpdesk walk-ins."""
    if customers < 1:
        raise ValueError("customers must be at least 1")
    rng = random.Random(seed)
    used_emails: set[str] = set()
    used_phones: set[str] = set()
    used_ids: set[str] = set()

    reps = _make_reps(rng)
    rep_ids = [r.id for r in reps]
    walk_ins = max(1, round(customers * 0.02))
    drafts = [
        _make_person(rng, i, used_emails, used_phones, used_ids, rep_ids if i < customers else None)
        for i in range(customers + walk_ins)
    ]
    _make_some_emails_non_ascii(rng, drafts[:customers], used_emails)

    sales = _make_sales(rng, drafts[:customers], reps)
    service = _make_service(rng, drafts, customers)
    marketing = _make_marketing(rng, drafts, customers, used_phones)

    persons = tuple(
        Person(
            index=d.index,
            name=d.name,
            email=d.email,
            phone=d.phone,
            national_id=d.national_id,
            birth_date=d.birth_date,
            address=d.address,
            city=d.city,
            owner_rep=d.owner_rep,
            sales_ids=tuple(d.sales_ids),
            requester_id=d.requester_id,
            contact_id=d.contact_id,
            marketing_conflict=d.marketing_conflict,
        )
        for d in drafts
    )
    return DemoWorld(seed=seed, persons=persons, sales=sales, service=service, marketing=marketing)


def _make_reps(rng: random.Random) -> tuple[CrmRep, ...]:
    names = list(_REP_NAMES)
    rng.shuffle(names)
    managers = set(rng.sample(range(len(names)), 3))
    return tuple(
        CrmRep(id=f"rep-{i + 1:02d}", name=name, is_manager=i in managers)
        for i, name in enumerate(names)
    )


def _ascii_slug(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(c for c in decomposed if c.isascii() and (c.isalnum() or c == "-"))
    return kept.lower()


def _make_person(
    rng: random.Random,
    index: int,
    used_emails: set[str],
    used_phones: set[str],
    used_ids: set[str],
    rep_ids: list[str] | None,
) -> _Draft:
    kind = rng.random()
    if kind < 0.55:
        (sur, sur_py), (given, given_py) = rng.choice(_SURNAMES), rng.choice(_GIVEN_NAMES)
        name, slug = sur + given, (given_py, sur_py)
    elif kind < 0.75:  # a Chinese name written the Western way: "Wei Zhang"
        (_, sur_py), (_, given_py) = rng.choice(_SURNAMES), rng.choice(_GIVEN_NAMES)
        name, slug = f"{given_py.title()} {sur_py.title()}", (given_py, sur_py)
    else:
        first, last = rng.choice(_WESTERN_FIRST), rng.choice(_WESTERN_LAST)
        name, slug = f"{first} {last}", (_ascii_slug(first), _ascii_slug(last))

    birth = date.fromordinal(
        rng.randint(date(1950, 1, 1).toordinal(), date(2005, 12, 31).toordinal())
    )
    email = _unique_email(rng, slug, birth, used_emails)
    phone = _unique_phone(rng, used_phones)
    national_id = _unique_national_id(rng, birth, used_ids)
    address, city = _make_address(rng, chinese=kind < 0.55 or rng.random() < 0.25)
    owner = rng.choice(rep_ids) if rep_ids else None
    return _Draft(index, name, email, phone, national_id, birth, address, city, owner)


def _unique_email(rng: random.Random, slug: tuple[str, str], birth: date, used: set[str]) -> str:
    first, last = slug
    pattern = rng.randrange(6)
    local = (
        f"{first}.{last}",
        f"{last}.{first}",
        f"{first}{last}",
        f"{first[0]}{last}",
        f"{last}{first}{birth.year % 100:02d}",
        f"{first}_{last}",
    )[pattern]
    domain = rng.choice(_EMAIL_DOMAINS)
    email = f"{local}@{domain}"
    while email in used:
        email = f"{local}{rng.randint(1, 999)}@{domain}"
    used.add(email)
    return email


def _unique_phone(rng: random.Random, used: set[str]) -> str:
    while True:
        phone = rng.choice(_MOBILE_PREFIXES) + f"{rng.randrange(10**8):08d}"
        if phone not in used:
            used.add(phone)
            return phone


def _unique_national_id(rng: random.Random, birth: date, used: set[str]) -> str:
    while True:
        first17 = f"{rng.choice(_REGION_CODES)}{birth:%Y%m%d}{rng.randint(1, 999):03d}"
        national_id = first17 + national_id_check_char(first17)
        if national_id not in used:
            used.add(national_id)
            return national_id


def _make_address(rng: random.Random, *, chinese: bool) -> tuple[str, str]:
    city, city_en, postcode, districts, streets = rng.choice(_CITIES)
    district, district_en = rng.choice(districts)
    street, street_en = rng.choice(streets)
    number = rng.randint(1, 999)
    room = rng.random() < 0.6
    building, flat = rng.randint(1, 30), rng.randint(1, 32) * 100 + rng.randint(1, 8)
    if chinese:
        tail = f"{building}栋{flat}室" if room else ""
        return f"{city}市{district}{street}{number}号{tail}", f"{city}市"
    head = f"Room {flat}, " if room else ""
    zip_code = f"{postcode}{rng.randrange(1000):03d}"
    return f"{head}{number} {street_en}, {district_en}, {city_en} {zip_code}", city_en


def _make_some_emails_non_ascii(rng: random.Random, drafts: list[_Draft], used: set[str]) -> None:
    """Give two Chinese-named and two accented Latin-named customers a non-ASCII address."""
    chinese = [d for d in drafts if not d.name.isascii() and " " not in d.name]
    accented = [d for d in drafts if not d.name.isascii() and " " in d.name]
    picked = rng.sample(chinese, min(2, len(chinese)))
    picked_latin = rng.sample(accented, min(2, len(accented)))
    for d, domain in zip(picked, ("例子.中国", "例子.公司"), strict=False):
        _replace_email(d, f"{d.name}@{domain}", used)
    for d, domain in zip(picked_latin, ("correo.es", "beispiel.de"), strict=False):
        first, last = d.name.split(" ", 1)
        local = f"{first}.{last}".lower().replace(" ", "").replace("'", "")
        _replace_email(d, f"{local}@{domain}", used)


def _replace_email(draft: _Draft, email: str, used: set[str]) -> None:
    if email in used:
        return
    used.discard(draft.email)
    used.add(email)
    draft.email = email


def _random_time(rng: random.Random, start: datetime, end: datetime) -> datetime:
    return start + timedelta(seconds=rng.randrange(max(1, int((end - start).total_seconds()))))


def _cents(value: int) -> Decimal:
    return Decimal(value).scaleb(-2)  # keeps two decimals: 12300 -> 123.00


def _mixed_case(rng: random.Random, email: str) -> str:
    """A differently cased spelling of `email`, as people type them: "Zhang.Wei@Example.COM"."""
    local, _, domain = email.partition("@")
    labels = domain.split(".")
    options = (
        ".".join(p.capitalize() for p in local.split("."))
        + "@"
        + ".".join([*(lbl.capitalize() for lbl in labels[:-1]), labels[-1].upper()]),
        email.upper(),
        email[:1].upper() + email[1:],
        local.capitalize() + "@" + domain.upper(),
    )
    candidates = [o for o in options if o != email]
    return rng.choice(candidates) if candidates else email


def _stray_spaces(rng: random.Random, email: str) -> str:
    return rng.choice(("  {} ", " {}", "{} ", "{}  ", "\t{} ")).format(email)


def _crm_email(rng: random.Random, email: str) -> str:
    """~30% of CRM emails are messy: odd case, stray spaces, or both."""
    r = rng.random()
    if r < 0.12:
        return _mixed_case(rng, email)
    if r < 0.22:
        return _stray_spaces(rng, email)
    if r < 0.30:
        return _stray_spaces(rng, _mixed_case(rng, email))
    return email


def _crm_phone(digits: str, *, dashed: bool) -> str:
    if dashed:
        return f"{digits[:3]}-{digits[3:7]}-{digits[7:]}"
    return f"+86 {digits[:3]} {digits[3:7]} {digits[7:]}"


def _make_sales(rng: random.Random, drafts: list[_Draft], reps: tuple[CrmRep, ...]) -> SalesRecords:
    # (draft, is the duplicate record); duplicates skip non-ASCII emails, whose case cannot differ.
    dup_candidates = [d for d in drafts if d.email.isascii()]
    duplicated = rng.sample(dup_candidates, min(len(dup_candidates), max(1, len(drafts) // 100)))
    entries = [(d, False) for d in drafts] + [(d, True) for d in duplicated]
    rng.shuffle(entries)

    # First pass: the originals, so a duplicate can be made to differ from its original.
    spelled: dict[int, tuple[str, bool]] = {}  # person index -> (crm email, dashed phone)
    created: dict[int, datetime] = {}
    for d, is_dup in entries:
        if not is_dup:
            spelled[d.index] = (_crm_email(rng, d.email), rng.random() < 0.25)
            created[d.index] = _random_time(rng, _CUSTOMERS_FROM, _CUSTOMERS_UNTIL)

    rep_ids = [r.id for r in reps]
    rows: list[tuple[int, _Draft, bool, str, str, str, datetime]] = []
    for offset, (d, is_dup) in enumerate(entries):
        customer_id = 10001 + offset
        email, dashed = spelled[d.index]
        created_at = created[d.index]
        owner = d.owner_rep or rep_ids[0]
        if is_dup:
            # The same person entered again later by someone else: other case, other phone format.
            lower = email.strip()
            email = _mixed_case(rng, d.email) if lower == d.email else d.email
            if rng.random() < 0.3:
                email = _stray_spaces(rng, email)
            dashed = not dashed
            created_at = min(
                created_at + timedelta(days=rng.randint(30, 700)),
                _ACTIVITY_UNTIL - timedelta(days=1),
            )
            owner = rng.choice(rep_ids)
        if is_dup:
            d.sales_ids.append(customer_id)
        else:
            d.sales_ids.insert(0, customer_id)  # the original record comes first
        phone = _crm_phone(d.phone, dashed=dashed)
        rows.append((customer_id, d, is_dup, email, phone, owner, created_at))

    orders: list[tuple[datetime, int, Decimal, str]] = []
    opportunities: list[CrmOpportunity] = []
    used_opp_ids: set[str] = set()
    weights = _ORDERS_PER_CUSTOMER
    for customer_id, _, is_dup, _, _, owner, created_at in rows:
        count = rng.randint(0, 2) if is_dup else rng.choices(range(len(weights)), weights)[0]
        since = max(created_at, _ACTIVITY_FROM)
        for _ in range(count):
            placed_at = _random_time(rng, since, _ACTIVITY_UNTIL)
            status = _order_status(rng, placed_at)
            orders.append((placed_at, customer_id, _order_total(rng), status))
        if not is_dup and rng.random() < 1 / 3:
            for _ in range(2 if rng.random() < 0.1 else 1):
                opportunities.append(
                    _make_opportunity(rng, customer_id, owner, created_at, used_opp_ids)
                )

    orders.sort(key=lambda o: (o[0], o[1]))
    order_records: list[CrmOrder] = []
    next_number = 1000001
    for placed_at, customer_id, total, status in orders:
        order_records.append(CrmOrder(f"SO-{next_number}", customer_id, placed_at, total, status))
        next_number += rng.randint(1, 3)  # gaps, as from a sequence shared with drafts

    lifetime: dict[int, Decimal] = {}
    for o in order_records:
        lifetime[o.customer_id] = lifetime.get(o.customer_id, Decimal("0.00")) + o.total
    customers = tuple(
        CrmCustomer(
            id=customer_id,
            full_name=d.name,
            email=email,
            phone=phone,
            national_id=d.national_id,
            address=d.address,
            lifetime_value=lifetime.get(customer_id, Decimal("0.00")),
            owner_rep=owner,
            created_at=created_at,
        )
        for customer_id, d, _, email, phone, owner, created_at in rows
    )
    return SalesRecords(
        customers=customers,
        orders=tuple(order_records),
        opportunities=tuple(sorted(opportunities, key=lambda o: o.id)),
        reps=reps,
    )


def _order_total(rng: random.Random) -> Decimal:
    tier = rng.choices((0, 1, 2, 3), (40, 40, 17, 3))[0]
    low, high = ((1_990, 19_900), (19_900, 99_900), (99_900, 499_900), (499_900, 2_999_900))[tier]
    return _cents(rng.randint(low, high))


def _order_status(rng: random.Random, placed_at: datetime) -> str:
    age = _ACTIVITY_UNTIL - placed_at
    if age < timedelta(days=3):
        return rng.choices(("paid", "shipped", "cancelled"), (70, 25, 5))[0]
    if age < timedelta(days=14):
        return rng.choices(("paid", "shipped", "delivered", "cancelled"), (10, 50, 35, 5))[0]
    return rng.choices(("delivered", "refunded", "cancelled"), (85, 7, 8))[0]


def _make_opportunity(
    rng: random.Random, customer_id: int, owner: str, created_at: datetime, used: set[str]
) -> CrmOpportunity:
    while (opp_id := f"OP-{rng.randint(100000, 999999)}") in used:
        pass
    used.add(opp_id)
    stages = ("prospecting", "proposal", "negotiation", "won", "lost")
    stage = rng.choices(stages, (25, 20, 15, 22, 18))
    return CrmOpportunity(
        id=opp_id,
        customer_id=customer_id,
        owner_rep=owner,
        stage=stage[0],
        amount=_cents(rng.randrange(2_000, 500_000, 50) * 100),
        updated_at=_random_time(rng, max(created_at, _ACTIVITY_FROM), _ACTIVITY_UNTIL),
    )


def _make_service(rng: random.Random, drafts: list[_Draft], customers: int) -> ServiceRecords:
    used_ids: set[str] = set()
    requesters: list[HelpdeskRequester] = []
    for d in drafts:
        # Every walk-in is a requester; ~85% of customers ever asked the helpdesk for something.
        if d.index < customers and rng.random() >= 0.85:
            continue
        while (req_id := f"req_{rng.getrandbits(40):010x}") in used_ids:
            pass
        used_ids.add(req_id)
        d.requester_id = req_id
        email = _mixed_case(rng, d.email) if rng.random() < 0.10 else d.email
        requesters.append(HelpdeskRequester(req_id, email, d.phone, d.name))

    tickets: list[tuple[datetime, str, str, str, int | None, datetime | None]] = []
    for r in requesters:
        for _ in range(rng.choices(range(len(_TICKETS_PER_REQUESTER)), _TICKETS_PER_REQUESTER)[0]):
            tickets.append(_make_ticket(rng, r.id))
    tickets.sort(key=lambda t: (t[0], t[1]))

    ticket_records: list[HelpdeskTicket] = []
    number = 100001
    for created_at, requester_id, subject, status, csat, closed_at in tickets:
        ticket_records.append(
            HelpdeskTicket(
                id=f"T-{number}",
                requester_id=requester_id,
                subject=subject,
                status=status,
                csat=csat,
                created_at=created_at.astimezone(_CST).isoformat(),
                closed_at=closed_at.astimezone(_CST).isoformat() if closed_at else None,
            )
        )
        number += rng.randint(1, 4)
    return ServiceRecords(
        requesters=tuple(sorted(requesters, key=lambda r: r.id)), tickets=tuple(ticket_records)
    )


def _make_ticket(
    rng: random.Random, requester_id: str
) -> tuple[datetime, str, str, str, int | None, datetime | None]:
    # The later of two draws: ticket volume grows over the years, as the business did.
    created_at = max(
        _random_time(rng, _ACTIVITY_FROM, _ACTIVITY_UNTIL),
        _random_time(rng, _ACTIVITY_FROM, _ACTIVITY_UNTIL),
    )
    age = _ACTIVITY_UNTIL - created_at
    if age < timedelta(days=30):
        status = rng.choices(("open", "pending", "closed"), (45, 25, 30))[0]
    elif age < timedelta(days=90):
        status = rng.choices(("open", "pending", "closed"), (15, 15, 70))[0]
    else:  # a few forgotten ones stay open for years
        status = rng.choices(("open", "pending", "closed"), (1, 2, 97))[0]
    csat: int | None = None
    closed_at: datetime | None = None
    if status == "closed":
        closed_at = min(
            created_at + timedelta(minutes=rng.randint(20, 60 * 24 * 10)), _ACTIVITY_UNTIL
        )
        if rng.random() < 0.8:
            csat = rng.choices((1, 2, 3, 4, 5), (5, 7, 15, 33, 40))[0]
    return created_at, requester_id, rng.choice(_TICKET_SUBJECTS), status, csat, closed_at


def _make_marketing(
    rng: random.Random, drafts: list[_Draft], customers: int, used_phones: set[str]
) -> MarketingRecords:
    used_ids: set[str] = set()
    contacts: list[MarketingContact] = []
    members: list[_Draft] = []
    for d in drafts:
        # ~80% of customers opted into marketing at some point; a quarter of the walk-ins too.
        if rng.random() >= (0.80 if d.index < customers else 0.25):
            continue
        while (contact_id := f"MC-{rng.randint(100000, 999999)}") in used_ids:
            pass
        used_ids.add(contact_id)
        d.contact_id = contact_id
        members.append(d)

    phone_only = {
        d.index for d in rng.sample(members, min(len(members), max(1, len(members) // 50)))
    }
    with_email = [d for d in members if d.index not in phone_only and d.index < customers]
    conflicts = {d.index for d in rng.sample(with_email, min(len(with_email), 4))}

    for d in members:
        assert d.contact_id is not None
        email = None if d.index in phone_only else d.email
        phone = d.phone
        if d.index in conflicts:
            # Same person, a number the CRM never saw: identity matching must notice the clash.
            phone = _unique_phone(rng, used_phones)
            d.marketing_conflict = True
        contacts.append(
            MarketingContact(
                id=d.contact_id,
                email=email,
                phone=f"+86{phone}",
                segment=rng.choices(_SEGMENTS, _SEGMENT_WEIGHTS)[0],
                consents=_make_consents(rng, has_email=email is not None),
            )
        )
    return MarketingRecords(contacts=tuple(sorted(contacts, key=lambda c: c.id)))


def _make_consents(rng: random.Random, *, has_email: bool) -> tuple[MarketingConsent, ...]:
    channels = [c for c in _CHANNELS if has_email or c != "email"]
    if rng.random() >= 0.85:
        channels = sorted(rng.sample(channels, rng.randint(1, len(channels))), key=_CHANNELS.index)
    granted_rate = {"email": 0.75, "sms": 0.70, "phone": 0.60}
    return tuple(
        MarketingConsent(
            channel=channel,
            granted=rng.random() < granted_rate[channel],
            updated_at=_random_time(
                rng, datetime(2021, 1, 1, tzinfo=UTC), _ACTIVITY_UNTIL
            ).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        for channel in channels
    )
