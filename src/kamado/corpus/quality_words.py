"""Word lists and patterns for the Japanese quality filters (`kamado.corpus.quality_rules`).

Written for kamado, from the kinds of pages the Swallow corpus paper (Okazaki et al. 2024, quality filtering)
and HojiChar (the Japanese corpus-cleaning toolkit) describe removing: adult and spam pages, shop and affiliate
pages, and bulletin-board threads. They are short on purpose: each entry is an expression that is rare in
ordinary prose, so a page full of them is what the rule is after, and one stray hit does nothing. Entries are
matched as plain substrings (no word boundaries in Japanese), so an entry must not be a part of common innocent
words.
"""

from __future__ import annotations

# Adult, dating-spam, gambling, counterfeit and miracle-cure expressions. The rule is on the fraction of
# characters they cover (Swallow: more than 5% of the characters), not on a single occurrence.
NG_WORDS: tuple[str, ...] = (
    # adult
    "アダルト",
    "エロ動画",
    "エロ画像",
    "無修正",
    "セックス",
    "セフレ",
    "中出し",
    "ハメ撮り",
    "巨乳",
    "爆乳",
    "熟女",
    "人妻",
    "痴漢",
    "痴女",
    "寝取",
    "オナニー",
    "フェラ",
    "淫乱",
    "素人動画",
    "AV女優",
    "AV男優",
    "デリヘル",
    "ソープランド",
    "風俗嬢",
    "援助交際",
    "援交",
    "乱交",
    "ヌード",
    "裏ビデオ",
    "エッチな",
    # dating spam
    "出会い系",
    "無料出会い",
    "出会い掲示板",
    "即会い",
    "即ハメ",
    # gambling and money spam
    "オンラインカジノ",
    "ネットカジノ",
    "パチスロ",
    "闇金",
    "即日融資",
    "簡単に稼げる",
    "確実に稼げる",
    # counterfeit goods and pills
    "スーパーコピー",
    "ブランドコピー",
    "偽物ブランド",
    "バイアグラ",
    "媚薬",
    "精力剤",
)

# Shop, affiliate and call-to-action phrases. A page is an advertisement when they come thick and fast
# (HojiChar's advertisement filter counts such keywords the same way); prose quoting one price or one campaign
# stays.
AD_KEYWORDS: tuple[str, ...] = (
    "送料無料",
    "税込",
    "税抜",
    "販売価格",
    "通常価格",
    "特別価格",
    "最安値",
    "激安",
    "特価",
    "割引",
    "%OFF",
    "％OFF",
    "クーポン",
    "ポイント還元",
    "ポイント倍",
    "キャッシュバック",
    "キャンペーン",
    "期間限定",
    "数量限定",
    "初回限定",
    "今だけ",
    "今すぐ",
    "お申し込み",
    "お申込み",
    "無料体験",
    "無料トライアル",
    "無料登録",
    "資料請求",
    "会員登録",
    "カートに入れる",
    "カートへ",
    "在庫あり",
    "ご注文",
    "お買い得",
    "お買い物",
    "詳しくはこちら",
    "詳細はこちら",
    "公式サイト",
    "公式通販",
    "アフィリエイト",
    "楽天市場",
    "Amazonで",
    "【広告】",
    "スポンサーリンク",
)

# Bulletin-board and comment-thread markers, as regular expressions (alternated into one pattern). A thread
# repeats them once per post, so a page with several is a dump of posts rather than an article about one.
BBS_PATTERNS: tuple[str, ...] = (
    r"名無し(?:さん|の|で)",  # the default poster name
    r"ID[:：][0-9A-Za-z+/.]{6,}",  # per-poster IDs
    r"[>＞]{2}\d+",  # reply anchors >>12
    r"\d{2,4}/\d{1,2}/\d{1,2}\s*[(（][月火水木金土日][)）]\s*\d{1,2}:\d{2}",  # 2012/01/01(月) 12:34 post stamps
    r"投稿日[:：]",
    r"投稿者[:：]",
    r"(?:^|\s)\d{1,4}\s*[:：]\s*(?:名前|匿名)",  # numbered post headers 12 : 名前
    r"[:：]\s*\d{4}/\d{2}/\d{2}",  # header field separator before the date
    r"レスを見る",
    r"返信する",
    r"このスレ",
    r"スレ主",
    r"スレ立て",
    r"書き込み(?:日|番号)",
    r"\bsage\b",
    r"\[匿名\]",
    r"通報する",
    r"いいね！?\s*\d+",
    r"返信\s*\d+件",
)
