"""Name material for demo and synthetic data: East-African (Swahili, Kikuyu, Luo, Luganda, Chagga…) names.

Plain lists rather than a faker dependency: the generator must be deterministic for a seed and fast enough to
draw a few million names.
"""

from __future__ import annotations

import random

LAST_NAMES: tuple[str, ...] = (
    "Mwangi", "Otieno", "Kamau", "Wanjiru", "Ochieng", "Mutua", "Kiprono", "Njoroge", "Onyango", "Mwakasege",
    "Mushi", "Massawe", "Kimaro", "Lyimo", "Mollel", "Temba", "Okello", "Mugisha", "Nakato", "Tumusiime",
    "Byaruhanga", "Habimana", "Uwimana", "Niyonzima", "Mbwana", "Salim", "Juma", "Hamisi", "Bakari", "Mrisho",
    "Shayo", "Swai", "Minja", "Mfinanga", "Mwakyusa", "Kilonzo", "Wafula", "Barasa", "Wekesa", "Chege",
    "Kariuki", "Ndungu", "Gitau", "Odhiambo", "Omondi", "Kipchoge", "Rotich", "Cheruiyot", "Langat", "Korir",
    "Mbeki", "Kagame", "Ssemakula", "Mukasa", "Kato", "Wasswa", "Nsubuga", "Lubega", "Ssali", "Kizza",
    "Mapunda", "Komba", "Ngowi", "Urassa", "Kessy", "Macha", "Mosha", "Tarimo", "Kiwelu", "Assenga",
    "Mwamba", "Chande", "Said", "Athumani", "Ramadhani", "Mohamedi", "Selemani", "Kombo", "Makame", "Haji",
    "Nyirenda", "Banda", "Phiri", "Mwale", "Tembo", "Zulu", "Chisale", "Lungu", "Sakala", "Mbewe",
    "Ndayisaba", "Nshimirimana", "Hakizimana", "Bizimana", "Mukamana", "Ingabire", "Ntakirutimana", "Mutesi",
)

MALE_NAMES: tuple[str, ...] = (
    "Juma", "Baraka", "Amani", "Hamisi", "Daudi", "Joseph", "John", "Peter", "Emmanuel", "Godfrey",
    "Ibrahim", "Hassan", "Salim", "Musa", "Yusuf", "Kato", "Tumaini", "Jabari", "Elia", "Paulo",
    "Yohana", "Petro", "Stephano", "Abdallah", "Rashidi", "Omari", "Idrisa", "Khamis", "Issa", "Hussein",
    "Bakari", "Shabani", "Athumani", "Kassimu", "Erasto", "Frederick", "Gabriel", "Samweli", "Zakaria",
    "Eliya",
    "Kennedy", "Dennis", "Brian", "Kevin", "Collins", "Wycliffe", "Evans", "Moses", "Isaac", "David",
    "Mathayo", "Simoni", "Andrea", "Luka", "Marko", "Filipo", "Nuhu", "Ally", "Seif", "Hemedi",
)

FEMALE_NAMES: tuple[str, ...] = (
    "Amina", "Neema", "Rehema", "Zawadi", "Upendo", "Imani", "Halima", "Mwanaisha", "Fatuma", "Grace",
    "Mary", "Esther", "Agnes", "Joyce", "Lucy", "Rose", "Anna", "Sarah", "Wanjiku", "Akinyi",
    "Achieng", "Nafula", "Nakato", "Aisha", "Zainabu", "Subira", "Mariamu", "Saida", "Tatu", "Furaha",
    "Mwajuma", "Asha", "Hadija", "Mwanahawa", "Salma", "Rukia", "Pendo", "Tumaini", "Witness", "Happiness",
    "Glory", "Faith", "Mercy", "Winnie", "Beatrice", "Eunice", "Jacqueline", "Judith", "Janeth", "Elizabeth",
    "Naomi", "Ruth", "Debora", "Martha", "Lea", "Hawa", "Mwanaidi", "Sikudhani", "Mwamvita", "Nasra",
)

# Syllables for invented place names ("Kirunga", "Mbalani"); regions get compass-style Swahili names first.
REGION_NAMES: tuple[str, ...] = (
    "Kusini", "Magharibi", "Mashariki", "Kaskazini", "Pwani", "Ziwani", "Milimani", "Bondeni", "Nyandaroni",
    "Tambarare", "Mabondeni", "Visiwani", "Kilimani", "Mtoni", "Kitongoji", "Jangwani",
)
_ONSETS = ("Ki", "Ma", "Mba", "Nya", "Mwa", "Bu", "Ka", "Lu", "Mi", "Nga", "Ru", "Sa", "Tu", "Che", "Ngo",
           "Ita", "Ku", "Li", "Mo", "Chi", "Ze", "Ha", "Igu", "Ma")
_MIDDLES = ("la", "ru", "nga", "si", "mbo", "ko", "wa", "te", "li", "no", "ba", "ge", "tu", "nde", "ri", "ma",
            "ta", "ye", "ndu", "ho")
_ENDINGS = ("ni", "ra", "la", "ne", "wa", "mo", "ka", "ti", "ro", "zi", "ngo", "mbe", "ga", "nyi", "ma", "to")


def place_name(rng: random.Random) -> str:
    middle = rng.choice(_MIDDLES) if rng.random() < 0.7 else ""
    return rng.choice(_ONSETS) + middle + rng.choice(_ENDINGS)
