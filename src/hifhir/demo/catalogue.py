"""The demo scheme's medical catalogue (domain §5): 257 items, 81 services, their price lists and 4 products,
plus synthetic items and services at scale (`demo-data --items N --services N`).

The names are invented but plausible (essential-medicines style item names, a district health system's services);
the statistics follow the openIMIS demo: items all drugs (type D), out-patient, for everybody, priced 0–78 490
(median 480); services 73 curative / 8 preventive, levels 58 D / 17 S / 4 H / 2 V, 7 surgeries, priced
330–42 000 (median 21 000).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import Connection, Engine, Table, select

from hifhir.demo import resources as res
from hifhir.demo.progress import Progress
from hifhir.domain.pricelists import assign_price_list, create_price_list
from hifhir.store.db import transaction
from hifhir.store.tables import health_facility, is_current, location, medical_item, medical_service, price_list

# --- items ----------------------------------------------------------------------------------------------------

# (drug, [(form, strength), ...]); a presentation is one medical item. Forms: what openIMIS item names use.
DRUGS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("ACETYLSALICYLIC ACID (ASPIRIN)", (("TABS", "300MG"), ("TABS", "75MG"))),
    ("PARACETAMOL", (("TABS", "500MG"), ("SYR", "120MG/5ML"), ("INJ", "150MG/ML"), ("SUPP", "125MG"))),
    ("IBUPROFEN", (("TABS", "200MG"), ("TABS", "400MG"), ("SUSP", "100MG/5ML"))),
    ("DICLOFENAC SODIUM", (("TABS", "50MG"), ("INJ", "25MG/ML"), ("GEL", "1%"))),
    ("MORPHINE SULPHATE", (("INJ", "10MG/ML"), ("TABS", "10MG"))),
    ("TRAMADOL", (("CAPS", "50MG"), ("INJ", "50MG/ML"))),
    ("PETHIDINE", (("INJ", "50MG/ML"),)),
    ("AMOXICILLIN", (("CAPS", "250MG"), ("CAPS", "500MG"), ("SUSP", "125MG/5ML"), ("SUSP", "250MG/5ML"))),
    ("AMOXICILLIN/CLAVULANIC ACID", (("TABS", "625MG"), ("SUSP", "228MG/5ML"))),
    ("AMPICILLIN", (("INJ", "500MG"), ("CAPS", "250MG"))),
    ("BENZYLPENICILLIN", (("INJ", "1MU"), ("INJ", "5MU"))),
    ("BENZATHINE BENZYLPENICILLIN", (("INJ", "2.4MU"),)),
    ("PHENOXYMETHYLPENICILLIN", (("TABS", "250MG"),)),
    ("CLOXACILLIN", (("CAPS", "250MG"), ("INJ", "500MG"))),
    ("CEFTRIAXONE", (("INJ", "250MG"), ("INJ", "1G"))),
    ("CEFALEXIN", (("CAPS", "250MG"), ("SUSP", "125MG/5ML"))),
    ("CIPROFLOXACIN", (("TABS", "250MG"), ("TABS", "500MG"), ("INF", "200MG/100ML"), ("DROPS", "0.3% EYE"))),
    ("COTRIMOXAZOLE", (("TABS", "480MG"), ("TABS", "960MG"), ("SUSP", "240MG/5ML"))),
    ("DOXYCYCLINE", (("CAPS", "100MG"),)),
    ("ERYTHROMYCIN", (("TABS", "250MG"), ("SUSP", "125MG/5ML"))),
    ("AZITHROMYCIN", (("TABS", "250MG"), ("TABS", "500MG"), ("SUSP", "200MG/5ML"))),
    ("GENTAMICIN", (("INJ", "40MG/ML"), ("INJ", "10MG/ML"), ("DROPS", "0.3% EYE"))),
    ("METRONIDAZOLE", (("TABS", "200MG"), ("TABS", "400MG"), ("SUSP", "200MG/5ML"), ("INF", "500MG/100ML"))),
    ("NITROFURANTOIN", (("TABS", "100MG"),)),
    ("CHLORAMPHENICOL", (("INJ", "1G"), ("CAPS", "250MG"), ("OINT", "1% EYE"))),
    ("TETRACYCLINE", (("OINT", "1% EYE"), ("CAPS", "250MG"))),
    ("FLUCONAZOLE", (("CAPS", "150MG"), ("INF", "200MG/100ML"))),
    ("NYSTATIN", (("SUSP", "100000IU/ML"), ("PESS", "100000IU"))),
    ("CLOTRIMAZOLE", (("CREAM", "1%"), ("PESS", "500MG"))),
    ("MICONAZOLE", (("CREAM", "2%"),)),
    ("GRISEOFULVIN", (("TABS", "500MG"), ("TABS", "125MG"))),
    ("ARTEMETHER/LUMEFANTRINE", (("TABS", "20/120MG X6"), ("TABS", "20/120MG X12"), ("TABS", "20/120MG X18"),
                                 ("TABS", "20/120MG X24"))),
    ("ARTESUNATE", (("INJ", "60MG"), ("SUPP", "100MG"))),
    ("QUININE", (("INJ", "300MG/ML"), ("TABS", "300MG"))),
    ("SULFADOXINE/PYRIMETHAMINE", (("TABS", "500/25MG"),)),
    ("MEBENDAZOLE", (("TABS", "100MG"), ("TABS", "500MG"))),
    ("ALBENDAZOLE", (("TABS", "400MG"), ("SUSP", "200MG/5ML"))),
    ("PRAZIQUANTEL", (("TABS", "600MG"),)),
    ("ORAL REHYDRATION SALTS", (("SACHET", "20.5G"),)),
    ("ZINC SULPHATE", (("TABS", "20MG"),)),
    ("FERROUS SULPHATE", (("TABS", "200MG"), ("SYR", "60MG/5ML"))),
    ("FERROUS SULPHATE/FOLIC ACID", (("TABS", "200/0.4MG"),)),
    ("FOLIC ACID", (("TABS", "5MG"),)),
    ("RETINOL (VITAMIN A)", (("CAPS", "200000IU"), ("CAPS", "100000IU"))),
    ("MULTIVITAMIN", (("TABS", ""), ("SYR", ""))),
    ("VITAMIN B COMPLEX", (("TABS", ""), ("INJ", ""))),
    ("ASCORBIC ACID", (("TABS", "100MG"),)),
    ("OXYTOCIN", (("INJ", "10IU/ML"),)),
    ("ERGOMETRINE", (("INJ", "0.2MG/ML"),)),
    ("MISOPROSTOL", (("TABS", "200MCG"),)),
    ("MAGNESIUM SULPHATE", (("INJ", "50%"),)),
    ("MEDROXYPROGESTERONE ACETATE", (("INJ", "150MG/ML"),)),
    ("LEVONORGESTREL/ETHINYLESTRADIOL", (("TABS", "0.15/0.03MG"),)),
    ("LEVONORGESTREL", (("TABS", "1.5MG"), ("IMPLANT", "75MG"))),
    ("SALBUTAMOL", (("TABS", "4MG"), ("INH", "100MCG"), ("NEB", "5MG/ML"), ("SYR", "2MG/5ML"))),
    ("BECLOMETASONE", (("INH", "100MCG"),)),
    ("AMINOPHYLLINE", (("INJ", "25MG/ML"), ("TABS", "100MG"))),
    ("PREDNISOLONE", (("TABS", "5MG"), ("TABS", "25MG"))),
    ("HYDROCORTISONE", (("INJ", "100MG"), ("CREAM", "1%"))),
    ("DEXAMETHASONE", (("INJ", "4MG/ML"), ("TABS", "0.5MG"))),
    ("CHLORPHENAMINE", (("TABS", "4MG"), ("SYR", "2MG/5ML"), ("INJ", "10MG/ML"))),
    ("PROMETHAZINE", (("TABS", "25MG"), ("INJ", "25MG/ML"), ("SYR", "5MG/5ML"))),
    ("ADRENALINE (EPINEPHRINE)", (("INJ", "1MG/ML"),)),
    ("ATROPINE", (("INJ", "1MG/ML"), ("DROPS", "1% EYE"))),
    ("DIAZEPAM", (("INJ", "5MG/ML"), ("TABS", "5MG"), ("RECTAL", "10MG"))),
    ("PHENOBARBITAL", (("TABS", "30MG"), ("INJ", "200MG/ML"))),
    ("CARBAMAZEPINE", (("TABS", "200MG"),)),
    ("PHENYTOIN", (("CAPS", "100MG"), ("INJ", "50MG/ML"))),
    ("SODIUM VALPROATE", (("TABS", "200MG"),)),
    ("HALOPERIDOL", (("TABS", "5MG"), ("INJ", "5MG/ML"))),
    ("CHLORPROMAZINE", (("TABS", "100MG"), ("INJ", "25MG/ML"))),
    ("AMITRIPTYLINE", (("TABS", "25MG"),)),
    ("FLUOXETINE", (("CAPS", "20MG"),)),
    ("METFORMIN", (("TABS", "500MG"), ("TABS", "850MG"))),
    ("GLIBENCLAMIDE", (("TABS", "5MG"),)),
    ("INSULIN SOLUBLE", (("INJ", "100IU/ML 10ML"),)),
    ("INSULIN ISOPHANE", (("INJ", "100IU/ML 10ML"),)),
    ("AMLODIPINE", (("TABS", "5MG"), ("TABS", "10MG"))),
    ("NIFEDIPINE", (("TABS", "20MG"),)),
    ("HYDROCHLOROTHIAZIDE", (("TABS", "25MG"),)),
    ("FUROSEMIDE", (("TABS", "40MG"), ("INJ", "10MG/ML"))),
    ("SPIRONOLACTONE", (("TABS", "25MG"),)),
    ("ENALAPRIL", (("TABS", "5MG"), ("TABS", "10MG"))),
    ("ATENOLOL", (("TABS", "50MG"),)),
    ("METHYLDOPA", (("TABS", "250MG"),)),
    ("HYDRALAZINE", (("INJ", "20MG"),)),
    ("DIGOXIN", (("TABS", "0.25MG"),)),
    ("SIMVASTATIN", (("TABS", "20MG"),)),
    ("OMEPRAZOLE", (("CAPS", "20MG"), ("INJ", "40MG"))),
    ("RANITIDINE", (("TABS", "150MG"),)),
    ("MAGNESIUM TRISILICATE COMPOUND", (("TABS", ""), ("SUSP", ""))),
    ("METOCLOPRAMIDE", (("TABS", "10MG"), ("INJ", "5MG/ML"))),
    ("HYOSCINE BUTYLBROMIDE", (("TABS", "10MG"), ("INJ", "20MG/ML"))),
    ("BISACODYL", (("TABS", "5MG"),)),
    ("LOPERAMIDE", (("CAPS", "2MG"),)),
    ("GLUCOSE", (("INF", "5% 500ML"), ("INF", "10% 500ML"), ("INJ", "50% 50ML"))),
    ("SODIUM CHLORIDE", (("INF", "0.9% 500ML"), ("INF", "0.9% 1000ML"))),
    ("RINGER LACTATE", (("INF", "500ML"), ("INF", "1000ML"))),
    ("DEXTROSE/SODIUM CHLORIDE", (("INF", "5%/0.9% 500ML"),)),
    ("POTASSIUM CHLORIDE", (("INJ", "15% 10ML"),)),
    ("WATER FOR INJECTION", (("INJ", "10ML"),)),
    ("LIDOCAINE", (("INJ", "1%"), ("INJ", "2%"), ("GEL", "2%"))),
    ("KETAMINE", (("INJ", "50MG/ML"),)),
    ("ISONIAZID", (("TABS", "100MG"), ("TABS", "300MG"))),
    ("RIFAMPICIN/ISONIAZID", (("TABS", "150/75MG"),)),
    ("RIFAMPICIN/ISONIAZID/PYRAZINAMIDE/ETHAMBUTOL", (("TABS", "150/75/400/275MG"),)),
    ("ETHAMBUTOL", (("TABS", "400MG"),)),
    ("PYRAZINAMIDE", (("TABS", "400MG"),)),
    ("ACICLOVIR", (("TABS", "200MG"), ("CREAM", "5%"), ("OINT", "3% EYE"))),
    ("ZIDOVUDINE/LAMIVUDINE", (("TABS", "300/150MG"),)),
    ("TENOFOVIR/LAMIVUDINE/EFAVIRENZ", (("TABS", "300/300/600MG"),)),
    ("TENOFOVIR/LAMIVUDINE/DOLUTEGRAVIR", (("TABS", "300/300/50MG"),)),
    ("NEVIRAPINE", (("TABS", "200MG"), ("SUSP", "50MG/5ML"))),
    ("BENZYL BENZOATE", (("LOTION", "25%"),)),
    ("CALAMINE", (("LOTION", ""),)),
    ("GENTIAN VIOLET", (("PAINT", "0.5%"),)),
    ("SILVER SULFADIAZINE", (("CREAM", "1%"),)),
    ("BENZOIC ACID/SALICYLIC ACID (WHITFIELD)", (("OINT", "6/3%"),)),
    ("POVIDONE IODINE", (("SOLUTION", "10%"),)),
    ("CHLORHEXIDINE", (("SOLUTION", "5%"), ("GEL", "7.1%"))),
    ("HYDROGEN PEROXIDE", (("SOLUTION", "6%"),)),
    ("TETANUS IMMUNOGLOBULIN", (("INJ", "250IU"),)),
    ("TETANUS TOXOID", (("INJ", "0.5ML"),)),
    ("RABIES VACCINE", (("INJ", "2.5IU"),)),
    ("SNAKE VENOM ANTISERUM", (("INJ", "10ML"),)),
    ("PHYTOMENADIONE (VITAMIN K)", (("INJ", "1MG/ML"), ("INJ", "10MG/ML"))),
    ("TRANEXAMIC ACID", (("INJ", "100MG/ML"),)),
    ("HEPARIN", (("INJ", "5000IU/ML"),)),
    ("ENOXAPARIN", (("INJ", "40MG"),)),
    ("WARFARIN", (("TABS", "5MG"),)),
    ("ALLOPURINOL", (("TABS", "100MG"),)),
    ("LEVOTHYROXINE", (("TABS", "50MCG"),)),
    ("CARBIMAZOLE", (("TABS", "5MG"),)),
    ("TIMOLOL", (("DROPS", "0.5% EYE"),)),
    ("PILOCARPINE", (("DROPS", "2% EYE"),)),
    ("XYLOMETAZOLINE", (("DROPS", "0.1% NASAL"),)),
    ("TETRACAINE", (("DROPS", "0.5% EYE"),)),
    ("BUPIVACAINE", (("INJ", "0.5%"), ("INJ", "0.5% SPINAL"))),
    ("PROPOFOL", (("INJ", "10MG/ML"),)),
    ("THIOPENTAL", (("INJ", "500MG"),)),
    ("SUXAMETHONIUM", (("INJ", "50MG/ML"),)),
    ("NEOSTIGMINE", (("INJ", "2.5MG/ML"),)),
    ("NALOXONE", (("INJ", "0.4MG/ML"),)),
    ("CALCIUM GLUCONATE", (("INJ", "10%"),)),
    ("SODIUM BICARBONATE", (("INJ", "8.4%"),)),
    ("MANNITOL", (("INF", "20% 500ML"),)),
    ("DOPAMINE", (("INJ", "40MG/ML"),)),
    ("LABETALOL", (("INJ", "5MG/ML"),)),
    ("NIFEDIPINE RETARD", (("TABS", "20MG"),)),
    ("CAPTOPRIL", (("TABS", "25MG"),)),
    ("ISOSORBIDE DINITRATE", (("TABS", "5MG"),)),
    ("GLYCERYL TRINITRATE", (("TABS", "0.5MG"),)),
    ("CLOPIDOGREL", (("TABS", "75MG"),)),
    ("PROPRANOLOL", (("TABS", "40MG"),)),
    ("CIMETIDINE", (("TABS", "200MG"),)),
    ("LACTULOSE", (("SYR", "3.3G/5ML"),)),
    ("SENNA", (("TABS", "7.5MG"),)),
    ("ONDANSETRON", (("TABS", "4MG"), ("INJ", "2MG/ML"))),
    ("CETIRIZINE", (("TABS", "10MG"),)),
    ("LORATADINE", (("TABS", "10MG"),)),
    ("PREDNISOLONE EYE", (("DROPS", "0.5% EYE"),)),
    ("BETAMETHASONE", (("CREAM", "0.1%"),)),
    ("COAL TAR", (("OINT", "5%"),)),
    ("PERMETHRIN", (("CREAM", "5%"), ("LOTION", "1%"))),
    ("SALICYLIC ACID", (("OINT", "2%"),)),
    ("ZINC OXIDE", (("OINT", "15%"),)),
    ("PODOPHYLLUM RESIN", (("PAINT", "15%"),)),
    ("CEFIXIME", (("TABS", "200MG"),)),
    ("CEFUROXIME", (("TABS", "250MG"), ("INJ", "750MG"))),
    ("CLINDAMYCIN", (("CAPS", "150MG"),)),
    ("VANCOMYCIN", (("INJ", "500MG"),)),
    ("MEROPENEM", (("INJ", "1G"),)),
    ("AMIKACIN", (("INJ", "250MG/ML"),)),
    ("SECNIDAZOLE", (("TABS", "500MG"),)),
    ("TINIDAZOLE", (("TABS", "500MG"),)),
    ("KETOCONAZOLE", (("TABS", "200MG"), ("CREAM", "2%"))),
    ("TERBINAFINE", (("CREAM", "1%"),)),
    ("PRIMAQUINE", (("TABS", "15MG"),)),
    ("DIHYDROARTEMISININ/PIPERAQUINE", (("TABS", "40/320MG"),)),
    ("IVERMECTIN", (("TABS", "3MG"),)),
    ("NICLOSAMIDE", (("TABS", "500MG"),)),
    ("METHYLERGOMETRINE", (("TABS", "0.125MG"),)),
    ("NORETHISTERONE", (("TABS", "5MG"),)),
    ("CLOMIFENE", (("TABS", "50MG"),)),
    ("CONDOM (MALE)", (("PIECE", ""),)),
    ("COPPER IUD", (("DEVICE", "380A"),)),
    ("ETONOGESTREL", (("IMPLANT", "68MG"),)),
    ("ALBUMIN HUMAN", (("INF", "20% 100ML"),)),
    ("DEXTRAN 70", (("INF", "6% 500ML"),)),
    ("HYDROXYUREA", (("CAPS", "500MG"),)),
    ("METHOTREXATE", (("TABS", "2.5MG"),)),
    ("TAMOXIFEN", (("TABS", "20MG"),)),
    ("ERYTHROPOIETIN", (("INJ", "4000IU"),)),
    ("IRON SUCROSE", (("INJ", "20MG/ML"),)),
    ("DEFERASIROX", (("TABS", "500MG"),)),
    ("COLCHICINE", (("TABS", "0.5MG"),)),
    ("BACLOFEN", (("TABS", "10MG"),)),
    ("LEVODOPA/CARBIDOPA", (("TABS", "250/25MG"),)),
    ("RISPERIDONE", (("TABS", "2MG"),)),
    ("OLANZAPINE", (("TABS", "10MG"),)),
    ("LITHIUM CARBONATE", (("TABS", "300MG"),)),
    ("FLUPHENAZINE DECANOATE", (("INJ", "25MG/ML"),)),
    ("BIPERIDEN", (("TABS", "2MG"),)),
    ("SURFACTANT (PORACTANT ALFA)", (("SUSP", "120MG/1.5ML"),)),
    ("CAFFEINE CITRATE", (("INJ", "20MG/ML"),)),
    ("ANTI-D IMMUNOGLOBULIN", (("INJ", "250MCG"),)),
    ("HEPATITIS B IMMUNOGLOBULIN", (("INJ", "200IU"),)),
    ("STREPTOKINASE", (("INJ", "1.5MU"),)),
)
DEMO_ITEM_COUNT = 257
# The dispensary list (14 items): what a rural dispensary stocks; health centres have these and the next cheapest.
DISPENSARY_ITEMS = frozenset({
    "PARACETAMOL TABS 500MG", "AMOXICILLIN CAPS 250MG", "ORAL REHYDRATION SALTS SACHET 20.5G",
    "ARTEMETHER/LUMEFANTRINE TABS 20/120MG X24", "COTRIMOXAZOLE TABS 480MG", "METRONIDAZOLE TABS 200MG",
    "FERROUS SULPHATE/FOLIC ACID TABS 200/0.4MG", "MEBENDAZOLE TABS 500MG", "ZINC SULPHATE TABS 20MG",
    "IBUPROFEN TABS 200MG", "CHLORPHENAMINE TABS 4MG", "GENTIAN VIOLET PAINT 0.5%", "TETRACYCLINE OINT 1% EYE",
    "PARACETAMOL SYR 120MG/5ML",
})
HEALTH_CENTRE_ITEM_COUNT = 51
FORM_PACKAGES = {
    "TABS": "tablet", "CAPS": "capsule", "SYR": "bottle 100 ml", "SUSP": "bottle 100 ml", "INJ": "vial/ampoule",
    "INF": "bag", "CREAM": "tube 15 g", "OINT": "tube 15 g", "GEL": "tube 30 g", "DROPS": "bottle 10 ml",
    "SUPP": "suppository", "PESS": "pessary", "INH": "inhaler 200 doses", "NEB": "ampoule 2.5 ml",
    "SACHET": "sachet", "LOTION": "bottle 100 ml", "PAINT": "bottle 25 ml", "SOLUTION": "bottle 500 ml",
    "RECTAL": "rectal tube", "IMPLANT": "implant", "PIECE": "piece", "DEVICE": "device",
}
# Relative cost of a form (ranks the items before the price ladder is laid over them).
FORM_COST = {"TABS": 0.0, "CAPS": 0.3, "SACHET": 0.0, "PIECE": 0.0, "SUPP": 1.0, "PESS": 1.0, "RECTAL": 1.5,
             "CREAM": 1.2, "OINT": 1.2, "GEL": 1.4, "LOTION": 1.4, "PAINT": 0.8, "SOLUTION": 1.6, "DROPS": 1.3,
             "SYR": 1.5, "SUSP": 1.7, "NEB": 1.8, "INH": 2.6, "INJ": 2.2, "INF": 2.6, "IMPLANT": 3.2,
             "DEVICE": 3.0}
COSTLY_DRUGS = ("INSULIN", "SNAKE VENOM", "RABIES", "IMMUNOGLOBULIN", "ENOXAPARIN", "MEROPENEM", "VANCOMYCIN",
                "ALBUMIN", "ERYTHROPOIETIN", "SURFACTANT", "STREPTOKINASE", "PROPOFOL", "TENOFOVIR", "DEFERASIROX",
                "CEFTRIAXONE", "ARTESUNATE", "IRON SUCROSE")
ITEM_PRICE_MIN, ITEM_PRICE_MEDIAN, ITEM_PRICE_MAX = 0, 480, 78_490
FREE_ITEM = "ORAL REHYDRATION SALTS"  # handed out free by public programmes: the demo's item priced 0


@dataclass(frozen=True, slots=True)
class Item:
    code: str
    name: str
    price: int
    package: str


@dataclass(frozen=True, slots=True)
class Service:
    code: str
    name: str
    service_type: str  # C curative | P preventive
    level: str  # S simple | V visit | D day of stay | H hospital case
    care_type: str  # O | I | B
    price: int
    category: str | None = None
    patient_category: int = 15


def _ladder(count: int, low: float, median: float, high: float, *, step: int) -> list[int]:
    """`count` increasing prices, geometric from `low` to `median` then to `high`, rounded to `step`; the middle
    one is the median and the last the maximum exactly."""
    mid = (count - 1) // 2
    out = []
    for i in range(count):
        if i <= mid:
            value = low * (median / low) ** (i / mid)
        else:
            value = median * (high / median) ** ((i - mid) / (count - 1 - mid))
        out.append(max(step, round(value / step) * step))
    out[mid], out[-1] = int(median), int(high)
    return out


def demo_items() -> list[Item]:
    """The 257 demo items: codes 0001…, prices laid over the items ranked by form and drug cost."""
    presentations = [(f"{drug} {form} {strength}".strip(), form, drug)
                     for drug, forms in DRUGS for form, strength in forms][:DEMO_ITEM_COUNT]
    if len(presentations) < DEMO_ITEM_COUNT:
        raise RuntimeError(f"only {len(presentations)} demo item presentations")
    rng = random.Random("demo-items")
    scores = [FORM_COST[form] + (3.0 if any(c in drug for c in COSTLY_DRUGS) else 0.0) + rng.uniform(0, 2.5)
              for _name, form, drug in presentations]
    scores[next(i for i, p in enumerate(presentations) if p[2] == FREE_ITEM)] = -1.0  # the one free item
    ladder = _ladder(DEMO_ITEM_COUNT - 1, 10, ITEM_PRICE_MEDIAN, ITEM_PRICE_MAX, step=10)
    # One item is free (openIMIS demo: price 0); the median stays that of the 257.
    ladder = [ITEM_PRICE_MIN, *ladder]
    ladder[DEMO_ITEM_COUNT // 2] = ITEM_PRICE_MEDIAN
    prices = [0] * DEMO_ITEM_COUNT
    for rank, index in enumerate(sorted(range(DEMO_ITEM_COUNT), key=lambda i: scores[i])):
        prices[index] = ladder[rank]
    return [Item(f"{i + 1:04d}", name, prices[i], FORM_PACKAGES[form])
            for i, (name, form, _drug) in enumerate(presentations)]


# --- services -------------------------------------------------------------------------------------------------

_FEMALE_ADULT, _CHILD = 2 | 4, 1 | 2 | 8

# (code, name, type, level, care type, price, category, patient category)
_SERVICES: tuple[tuple[str, str, str, str, str, int, str | None, int], ...] = (
    ("G1", "General outpatient consultation", "C", "V", "O", 2_000, None, 15),
    ("G2", "Specialist consultation", "C", "V", "O", 5_000, None, 15),
    ("A1", "Antenatal care visit", "P", "S", "O", 1_500, None, _FEMALE_ADULT),
    ("A2", "Postnatal care visit", "P", "S", "O", 1_500, None, _FEMALE_ADULT),
    ("A3", "Family planning counselling and method provision", "P", "S", "O", 1_000, None, 15),
    ("A4", "Child immunisation session", "P", "S", "O", 330, None, _CHILD),
    ("A5", "Growth monitoring and nutrition counselling", "P", "S", "O", 500, None, _CHILD),
    ("A6", "HIV counselling and testing", "P", "S", "O", 800, None, 15),
    ("A7", "Cervical cancer screening (VIA)", "P", "S", "O", 2_000, None, _FEMALE_ADULT),
    ("A8", "Tetanus toxoid vaccination", "P", "S", "O", 400, None, 15),
    ("L1", "Malaria rapid diagnostic test", "C", "S", "B", 1_000, None, 15),
    ("L2", "Full blood count", "C", "S", "B", 2_500, None, 15),
    ("L3", "Urinalysis", "C", "S", "B", 800, None, 15),
    ("L4", "Stool microscopy", "C", "S", "B", 900, None, 15),
    ("L5", "Blood glucose test", "C", "S", "B", 600, None, 15),
    ("L6", "Chest X-ray", "C", "S", "B", 9_000, None, 15),
    ("L7", "Abdominal ultrasound", "C", "S", "B", 12_000, None, 15),
    ("L8", "Wound dressing", "C", "S", "B", 1_500, None, 15),
    ("L9", "Suturing of a minor wound", "C", "S", "B", 3_000, None, 15),
    ("H1", "Normal delivery", "C", "H", "B", 25_000, None, _FEMALE_ADULT),
    ("H2", "Assisted delivery (vacuum extraction)", "C", "H", "B", 32_000, None, _FEMALE_ADULT),
    ("H3", "Neonatal resuscitation and care", "C", "H", "B", 26_000, None, _CHILD),
    ("H4", "Blood transfusion", "C", "H", "B", 28_000, None, 15),
    ("S1", "Caesarean section", "C", "D", "B", 42_000, "S", _FEMALE_ADULT),
    ("S2", "Appendicectomy", "C", "D", "B", 40_000, "S", 15),
    ("S3", "Inguinal hernia repair", "C", "D", "B", 36_000, "S", 15),
    ("S4", "Laparotomy", "C", "D", "B", 42_000, "S", 15),
    ("S5", "Hydrocelectomy", "C", "D", "B", 34_000, "S", 1 | 4 | 8),
    ("S6", "Closed fracture reduction with cast", "C", "D", "B", 30_000, "S", 15),
    ("S7", "Incision and drainage of an abscess under anaesthesia", "C", "D", "B", 24_000, "S", 15),
    ("I1", "Medical ward stay (adult), per day", "C", "D", "B", 14_000, None, 1 | 2 | 4),
    ("I2", "Medical ward stay (child), per day", "C", "D", "B", 12_000, None, _CHILD),
    ("I3", "Surgical ward stay, per day", "C", "D", "B", 16_000, None, 15),
    ("I4", "Maternity ward stay, per day", "C", "D", "B", 15_000, None, _FEMALE_ADULT),
    ("I5", "Paediatric ward stay, per day", "C", "D", "B", 12_000, None, _CHILD),
    ("I6", "Neonatal unit stay, per day", "C", "D", "B", 18_000, None, _CHILD),
    ("I7", "Isolation ward stay, per day", "C", "D", "B", 17_000, None, 15),
    ("I8", "Intensive care stay, per day", "C", "D", "B", 40_000, None, 15),
    ("I9", "High dependency unit stay, per day", "C", "D", "B", 30_000, None, 15),
    ("I10", "Psychiatric ward stay, per day", "C", "D", "B", 16_000, None, 15),
    ("I11", "Private room supplement, per day", "C", "D", "B", 20_000, None, 15),
    ("I12", "Observation bed (under 24 hours)", "C", "D", "B", 8_000, None, 15),
    ("M1", "Treatment of uncomplicated malaria", "C", "D", "B", 9_000, None, 15),
    ("M2", "Treatment of severe malaria", "C", "D", "B", 32_000, None, 15),
    ("M3", "Treatment of pneumonia", "C", "D", "B", 18_000, None, 15),
    ("M4", "Treatment of severe pneumonia", "C", "D", "B", 30_000, None, 15),
    ("M5", "Treatment of acute diarrhoea with dehydration", "C", "D", "B", 15_000, None, 15),
    ("M6", "Treatment of typhoid fever", "C", "D", "B", 24_000, None, 15),
    ("M7", "Treatment of urinary tract infection", "C", "D", "B", 12_000, None, 15),
    ("M8", "Treatment of meningitis", "C", "D", "B", 38_000, None, 15),
    ("M9", "Treatment of tuberculosis (intensive phase)", "C", "D", "B", 26_000, None, 15),
    ("M10", "Treatment of severe acute malnutrition", "C", "D", "B", 28_000, None, _CHILD),
    ("M11", "Treatment of severe anaemia", "C", "D", "B", 22_000, None, 15),
    ("M12", "Treatment of sickle cell crisis", "C", "D", "B", 27_000, None, 15),
    ("M13", "Treatment of an acute asthma attack", "C", "D", "B", 23_000, None, 15),
    ("M14", "Treatment of a hypertensive crisis", "C", "D", "B", 25_000, None, 15),
    ("M15", "Treatment of a diabetic emergency", "C", "D", "B", 29_000, None, 15),
    ("M16", "Treatment of heart failure", "C", "D", "B", 31_000, None, 15),
    ("M17", "Treatment of stroke", "C", "D", "B", 35_000, None, 15),
    ("M18", "Treatment of convulsions", "C", "D", "B", 23_000, None, 15),
    ("M19", "Treatment of pre-eclampsia and eclampsia", "C", "D", "B", 34_000, None, _FEMALE_ADULT),
    ("M20", "Treatment of post-partum haemorrhage", "C", "D", "B", 36_000, None, _FEMALE_ADULT),
    ("M21", "Treatment of incomplete abortion", "C", "D", "B", 22_000, None, _FEMALE_ADULT),
    ("M22", "Treatment of pelvic inflammatory disease", "C", "D", "B", 16_000, None, _FEMALE_ADULT),
    ("M23", "Treatment of a sexually transmitted infection", "C", "D", "B", 10_000, None, 15),
    ("M24", "Treatment of burns", "C", "D", "B", 33_000, None, 15),
    ("M25", "Treatment of a snake bite", "C", "D", "B", 30_000, None, 15),
    ("M26", "Post-exposure treatment of an animal bite", "C", "D", "B", 21_000, None, 15),
    ("M27", "Treatment of poisoning", "C", "D", "B", 25_000, None, 15),
    ("M28", "Conservative treatment of a fracture", "C", "D", "B", 22_000, None, 15),
    ("M29", "Treatment of a head injury", "C", "D", "B", 37_000, None, 15),
    ("M30", "Treatment of cellulitis", "C", "D", "B", 24_000, None, 15),
    ("M31", "Treatment of osteomyelitis", "C", "D", "B", 28_000, None, 15),
    ("M32", "Treatment of acute hepatitis", "C", "D", "B", 24_000, None, 15),
    ("M33", "Treatment of peptic ulcer disease", "C", "D", "B", 14_000, None, 15),
    ("M34", "Treatment of acute gastroenteritis", "C", "D", "B", 13_000, None, 15),
    ("M35", "Treatment of neonatal sepsis", "C", "D", "B", 27_000, None, _CHILD),
    ("M36", "Treatment of neonatal jaundice", "C", "D", "B", 23_000, None, _CHILD),
    ("M37", "Treatment of schistosomiasis", "C", "D", "B", 11_000, None, 15),
    ("M38", "Treatment of an eye infection", "C", "D", "B", 8_000, None, 15),
    ("M39", "Treatment of otitis media", "C", "D", "B", 9_000, None, 15),
)
DEMO_SERVICES: tuple[Service, ...] = tuple(Service(code, name, st, level, care, price, category, pc)
                                           for code, name, st, level, care, price, category, pc in _SERVICES)
DISPENSARY_SERVICES = ("G1", "A1", "A4", "L1")
HEALTH_CENTRE_SERVICES = ("G1", "A1", "A2", "A3", "A4", "A8", "L1", "L3", "L8")
# Not covered by the demo products (openIMIS demo: 78 of the 81 services per product).
UNCOVERED_SERVICES = frozenset({"I8", "I10", "I11"})


def price_list_selection(items: list[Item]) -> dict[str, tuple[list[str], list[str]]]:
    """HF level → (item codes, service codes) of its price lists: dispensary 14/4, health centre 51/9,
    hospital everything."""
    dispensary = [i.code for i in items if i.name in DISPENSARY_ITEMS]
    others = sorted((i for i in items if i.name not in DISPENSARY_ITEMS), key=lambda i: (i.price, i.code))
    centre = sorted(dispensary + [i.code for i in others[:HEALTH_CENTRE_ITEM_COUNT - len(dispensary)]])
    return {
        "D": (dispensary, list(DISPENSARY_SERVICES)),
        "C": (centre, list(HEALTH_CENTRE_SERVICES)),
        "H": ([i.code for i in items], [s.code for s in DEMO_SERVICES]),
    }


# --- price lists ----------------------------------------------------------------------------------------------

LEVEL_LABELS = {"D": "dispensaries", "C": "health centres", "H": "hospitals"}


def price_list_name(kind: str, region_name: str, region_code: str, level: str) -> str:
    """One items list and one services list per region and facility level; the code keeps names unique."""
    return f"{region_name} {LEVEL_LABELS[level]} {'items' if kind == 'item' else 'services'} ({region_code})"


def ensure_price_lists(conn: Connection, list_date: date) -> None:
    """Every region with facilities has its 3 items and 3 services lists, and every facility without a list uses
    its region's lists for its level (domain §5). Lists already there are kept as they are."""
    items = demo_items()
    selection = price_list_selection(items)
    existing_items = set(conn.execute(select(medical_item.c.code).where(is_current(medical_item))).scalars())
    existing_services = set(conn.execute(select(medical_service.c.code).where(
        is_current(medical_service))).scalars())
    region = location.alias("region")
    facilities = conn.execute(
        select(health_facility.c.pk, health_facility.c.level, health_facility.c.item_price_list_pk,
               health_facility.c.service_price_list_pk, region.c.pk.label("region_pk"),
               region.c.code.label("region_code"), region.c.name.label("region_name"))
        .select_from(health_facility.join(location, location.c.pk == health_facility.c.location_pk)
                     .join(region, region.c.pk == location.c.region_pk))
        .where(is_current(health_facility), health_facility.c.level.in_(tuple(LEVEL_LABELS)))
        .order_by(health_facility.c.pk)).all()
    lists = {(row.kind, row.name): row.pk for row in conn.execute(
        select(price_list.c.pk, price_list.c.kind, price_list.c.name).where(is_current(price_list)))}
    for hf in facilities:
        for kind, column, codes, known in (
                ("item", "item_price_list_pk", selection[hf.level][0], existing_items),
                ("service", "service_price_list_pk", selection[hf.level][1], existing_services)):
            if hf._mapping[column] is not None:
                continue
            name = price_list_name(kind, hf.region_name, hf.region_code, hf.level)
            if (kind, name) not in lists:
                lines: dict[str, Any] = {code: None for code in codes if code in known}
                lists[(kind, name)] = create_price_list(conn, kind, name, list_date, lines,  # type: ignore[arg-type]
                                                        location_pk=hf.region_pk)
            assign_price_list(conn, lists[(kind, name)], [hf.pk])


# --- products -------------------------------------------------------------------------------------------------

def regional_products(name: str, suffix: str, number: int = 1) -> tuple[res.ProductSpec, res.ProductSpec]:
    """The demo's two products for a region (domain §5): Fixed Cycle Cover, then Basic Cover (which converts
    into it at renewal, so it comes second). `suffix`: two letters of the region's name (UL, TA)."""
    fc, bc = f"FC{suffix}{number:04d}", f"BC{suffix}{number:04d}"
    return (
        res.ProductSpec(fc, f"Fixed Cycle Cover {name}", lump_sum=0, threshold=6, member_count=9999,
                        max_installments=3, premium_adult=4_000, premium_child=4_000, registration_lump_sum=1_000,
                        general_assembly_lump_sum=1_000, max_policy=300_000, start_cycles=("01-06", "01-11"),
                        grace_period_payment=3),
        res.ProductSpec(bc, f"Basic Cover {name}", lump_sum=10_000, threshold=6, member_count=6,
                        max_installments=1, conversion=fc),
    )


DEMO_PRODUCTS: tuple[tuple[str, res.ProductSpec], ...] = tuple(
    (region, spec) for region, name, suffix in (("R1", "Ultha", "UL"), ("R2", "Tahida", "TA"))
    for spec in regional_products(name, suffix)
)


# --- synthetic catalogue at scale -----------------------------------------------------------------------------

SYNTHETIC_PREFIX = "X"  # demo item codes are digits and service codes a letter and 1-2 digits: no collision
SYNTHETIC_DIGITS = 5
CATALOGUE_BATCH = 1000  # resources per transaction
_SYNTHETIC_CODE = re.compile(rf"^{SYNTHETIC_PREFIX}(\d+)$")
_SERVICE_ACTS = ("Consultation", "Review", "Procedure", "Assessment", "Therapy session", "Screening", "Test",
                 "Examination", "Management", "Care package")
_SERVICE_FIELDS = ("cardiology", "dermatology", "ophthalmology", "orthopaedics", "paediatrics", "gynaecology",
                   "psychiatry", "physiotherapy", "dentistry", "ENT", "urology", "nephrology", "oncology",
                   "neurology", "nutrition", "radiology", "laboratory", "surgery", "obstetrics", "geriatrics")


def next_synthetic_number(conn: Connection, table: Table) -> int:
    """1 + the highest synthetic code number among all rows (deleted ones too: a code is never reused)."""
    top = 0
    for code in conn.execute(select(table.c.code).where(table.c.code.like(f"{SYNTHETIC_PREFIX}%"))).scalars():
        m = _SYNTHETIC_CODE.match(code)
        if m:
            top = max(top, int(m.group(1)))
    return top + 1


def synthetic_code(n: int) -> str:
    return f"{SYNTHETIC_PREFIX}{n:0{SYNTHETIC_DIGITS}d}"


def synthetic_item(rng: random.Random, n: int) -> dict[str, Any]:
    drug, forms = rng.choice(DRUGS)
    form, strength = rng.choice(forms)
    name = f"{drug} {form} {strength}".strip()
    name = f"{name} ({rng.choice(('GENERIC', 'BRAND', 'DONATED', 'BULK', 'PAEDIATRIC'))} {n})"[:100]
    price = round(ITEM_PRICE_MEDIAN * math.exp(rng.gauss(0, 1.3)) / 10) * 10
    return res.medication_resource(synthetic_code(n), name, min(price, ITEM_PRICE_MAX),
                                   item_type="D" if rng.random() < 0.9 else "M",
                                   care_type=rng.choice("OOOIB"), package=FORM_PACKAGES[form])


def synthetic_service(rng: random.Random, n: int) -> dict[str, Any]:
    level = rng.choices("DSHV", weights=(58, 17, 4, 2))[0]
    price = round(min(max(21_000 * math.exp(rng.gauss(0, 0.8)), 330), 42_000) / 10) * 10
    category = "S" if rng.random() < 0.09 else None
    title = f"{rng.choice(_SERVICE_ACTS)} in {rng.choice(_SERVICE_FIELDS)} ({n})"
    return res.activity_definition_resource(synthetic_code(n), title, price,
                                            service_type="P" if rng.random() < 0.1 else "C", level=level,
                                            care_type=rng.choice("BBBBO"), category=category)


def generate_catalogue(engine: Engine, items: int, services: int, *, seed: int = 42, progress: bool = True) -> None:
    """Add `items` synthetic medical items and `services` synthetic services to the demo scheme, written like the
    demo (through the kinds, one flush per transaction of CATALOGUE_BATCH). Codes continue after the highest
    synthetic code (X00001…), so a rerun adds more. They are in no price list and no product."""
    from hifhir.demo.scheme import SchemeWriter, load_demo_scheme

    load_demo_scheme(engine)
    for kind_name, table, count, build in (("medication", medical_item, items, synthetic_item),
                                           ("activity-definition", medical_service, services, synthetic_service)):
        if count <= 0:
            continue
        with engine.connect() as conn:
            first = next_synthetic_number(conn, table)
        rng = random.Random(f"{seed}-{kind_name}-{first}")
        bar = Progress(count, "items" if kind_name == "medication" else "services", enabled=progress)
        for start in range(0, count, CATALOGUE_BATCH):
            size = min(CATALOGUE_BATCH, count - start)
            with transaction(engine, write=True) as conn:
                w = SchemeWriter.open(conn)
                for n in range(first + start, first + start + size):
                    w.create(kind_name, build(rng, n))
                w.flush()
            bar.update(size)
        bar.close()
