"""Students in their web space while the tills sell: the `peak` tills, and beside them students
who log in (argon2id), read "Ma carte" and look for a partner nearby. Locust reports each page's
latency apart ("portal …" rows), measured beside the terminal load.

    hdfpay loadtest students --users 20 --seconds 60
"""

from __future__ import annotations

import itertools
import os
import random

from locust import HttpUser, task

from loadtest import peak           # the module: locust would run an imported user class too
from loadtest.student_accounts import (LOADTEST_STUDENT_PASSWORD, PORTAL_URL_VARIABLE,
                                       STUDENTS_VARIABLE)

TILLS_PER_STUDENT = 3                     # the weight of tills against students
TOWNS = ("Arras", "Lille", "Amiens", "59000", "Beauvais", "Calais")
_dossiers = itertools.cycle([d for d in os.environ.get(STUDENTS_VARIABLE, "").split(",") if d]
                            or ["NONE"])


class Till(peak.PeakTill):
    weight = TILLS_PER_STUDENT


# Absolute URLs: locust's --host (the terminal listener) overrides every user class's host.
PORTAL = os.environ.get(PORTAL_URL_VARIABLE, "")


class Student(HttpUser):
    weight = 1

    def on_start(self) -> None:
        self.client.get(PORTAL + "/connexion", name="portal GET /connexion")
        token = self.client.cookies.get("hdf_csrf", "")
        with self.client.post(PORTAL + "/connexion", name="portal POST /connexion (argon2id)",
                              data={"csrf_token": token, "identifiant": next(_dossiers),
                                    "mot_de_passe": LOADTEST_STUDENT_PASSWORD},
                              catch_response=True) as reply:
            if not reply.url.endswith("/ma-carte"):
                reply.failure(f"login did not reach Ma carte ({reply.status_code})")

    @task(5)
    def my_card(self) -> None:
        with self.client.get(PORTAL + "/ma-carte", name="portal GET /ma-carte", catch_response=True) as reply:
            if "Mon porte-monnaie" not in reply.text:
                reply.failure("Ma carte without the wallet")

    @task(2)
    def partners_nearby(self) -> None:
        with self.client.get(PORTAL + "/ou-utiliser-ma-carte", params={"ville": random.choice(TOWNS)},
                             name="portal GET /ou-utiliser-ma-carte?ville=…",
                             catch_response=True) as reply:
            if "km" not in reply.text:
                reply.failure("no partner listed")
