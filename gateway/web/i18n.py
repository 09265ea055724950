"""The console's words, in English and French (the portal's own words: flux, fiche, code
interface, Complète/Partielle, statut). The language: the ``lang`` cookie the switch sets, else
the browser's ``Accept-Language``, else English."""

from __future__ import annotations

LANGUAGES = ("en", "fr")

_WORDS: dict[str, tuple[str, str]] = {
    "raccord": ("raccord — flow tracking", "raccord — suivi des flux"),
    "overview": ("Overview", "Vue d'ensemble"),
    "flows": ("Flows", "Suivi des flux"),
    "flow": ("Flow", "Flux"),
    "flow_id": ("Flow id", "N° de flux"),
    "rejected": ("Rejected invoices", "Factures rejetées"),
    "connections": ("Connections", "Fiches de raccordement"),
    "certificates": ("Certificates", "Certificats"),
    "sign_in": ("Sign in", "Se connecter"),
    "sign_out": ("Sign out", "Se déconnecter"),
    "user": ("User", "Utilisateur"),
    "password": ("Password", "Mot de passe"),
    "bad_credentials": ("Wrong user name or password.", "Utilisateur ou mot de passe incorrect."),
    "sign_in_throttled": (
        "Too many failed sign-ins from this address or for this user: try again in {seconds} s.",
        "Trop d'échecs de connexion depuis cette adresse ou pour cet utilisateur : réessayez "
        "dans {seconds} s.",
    ),
    "signed_in_as": ("Signed in as", "Connecté en tant que"),
    "sign_in_needed": (
        "Sign in to see the flows.",
        "Connectez-vous pour consulter les flux.",
    ),
    "date": ("Date", "Date"),
    "file": ("File", "Fichier"),
    "connection": ("Connection", "Raccordement"),
    "interface": ("Interface code", "Code interface"),
    "state": ("State", "État"),
    "remote_name": ("Remote name", "Nom distant"),
    "status": ("Return status", "Statut"),
    "collateral": ("collateral", "collatérale"),
    "guilty": ("at fault", "en cause"),
    "attempts": ("Attempts", "Tentatives"),
    "last_error": ("Last error", "Dernière erreur"),
    "since": ("From", "Du"),
    "until": ("Until (excluded)", "Au (exclu)"),
    "search": ("File, invoice number or flow id", "Fichier, n° de facture ou n° de flux"),
    "filter": ("Filter", "Filtrer"),
    "all": ("all", "tous"),
    "any": ("any", "tous"),
    "oldest_first": ("oldest first", "plus anciens d'abord"),
    "newest_first": ("newest first", "plus récents d'abord"),
    "next": ("Next page", "Page suivante"),
    "previous": ("Previous page", "Page précédente"),
    "csv": ("Download as CSV", "Télécharger en CSV"),
    "nothing": ("Nothing matches.", "Aucun résultat."),
    "story": ("Story", "Historique"),
    "from_state": ("From", "De"),
    "to_state": ("To", "Vers"),
    "at": ("At", "Le"),
    "detail": ("Detail", "Détail"),
    "node": ("Node", "Nœud"),
    "receipt": ("Receipt", "Accusé de réception"),
    "invoices": ("Invoices", "Factures"),
    "invoice": ("Invoice", "Facture"),
    "history": ("Status history", "Historique des statuts"),
    "reasons": ("Reasons", "Motifs"),
    "lot": ("Lot", "Lot"),
    "lot_members": ("Files in this lot", "Fichiers de ce lot"),
    "resubmitted_as": ("Resubmitted as", "Redéposé dans"),
    "resubmission_of": ("Resubmits the collateral invoices of", "Redépose les factures de"),
    "returns": ("Return flows", "Flux retour"),
    "download": ("Download", "Télécharger"),
    "download_sent": ("Download the file", "Télécharger le fichier"),
    "retry": ("Retry", "Relancer"),
    "retry_force": ("Send even though it is a duplicate", "Envoyer malgré le doublon"),
    "retry_confirm": ("Put this flow back in the queue?", "Remettre ce flux dans la file ?"),
    "retry_explain": (
        "The file goes back from error/ to the queue; it is analysed and routed again with "
        "the configuration as it is now, and sent under the same remote name.",
        "Le fichier revient de error/ dans la file ; il est analysé et aiguillé de nouveau "
        "selon la configuration actuelle, puis envoyé sous le même nom distant.",
    ),
    "duplicate_warning": (
        "This flow was refused as a duplicate of an earlier one (see the last error).",
        "Ce flux a été refusé comme doublon d'un flux antérieur (voir la dernière erreur).",
    ),
    "duplicate_of": ("Duplicate of", "Doublon de"),
    "confirm": ("Confirm", "Confirmer"),
    "cancel": ("Cancel", "Annuler"),
    "environment": ("Environment", "Environnement"),
    "protocol": ("Protocol", "Protocole"),
    "partner_code": ("Partner code", "Code application partenaire"),
    "structure": ("Structure", "Structure"),
    "validity": ("Validity", "Période de validité"),
    "modes": ("Modes", "Modes de raccordement"),
    "usable": ("Usable today", "Utilisable aujourd'hui"),
    "yes": ("yes", "oui"),
    "no": ("no", "non"),
    "last_success": ("Last success", "Dernier succès"),
    "failures": ("Failures in a row", "Échecs consécutifs"),
    "role": ("Role", "Rôle"),
    "subject": ("Subject", "Sujet"),
    "issuer": ("Issuer", "Émetteur"),
    "not_after": ("Expires", "Expire le"),
    "days_left": ("Days left", "Jours restants"),
    "chain": ("Chain problems", "Problèmes de chaîne"),
    "counts": ("Flows by state", "Flux par état"),
    "queue": ("Queue depth", "Flux en attente"),
    "health": ("Health", "Santé"),
    "per_day": ("Last 30 days", "30 derniers jours"),
    "per_hour": ("Last 48 hours", "48 dernières heures"),
    "sent": ("sent", "envoyés"),
    "failed": ("failed", "en erreur"),
    "rejected_short": ("rejected", "rejetées"),
    "ok": ("ok", "ok"),
    "language": ("Français", "English"),
    "not_found": ("No such page.", "Page introuvable."),
    "no_flow": ("No such flow.", "Flux introuvable."),
    "forbidden": (
        "Refused: the form was out of date or not sent by this console. Reload the page.",
        "Refusé : le formulaire était périmé ou ne venait pas de cette console. Rechargez la page.",
    ),
    "complete": ("Complète", "Complète"),
    "partial": ("Partielle", "Partielle"),
    "none": ("not connected", "pas de raccordement"),
    "skip": ("Skip to content", "Aller au contenu"),
    "page_failed": (
        "This page failed; the daemon logged why (event web.page_failed).",
        "Cette page a échoué ; le démon en a journalisé la cause (événement web.page_failed).",
    ),
    "refused": ("Refused", "Refusé"),
    "download_return": ("Download the return flow", "Télécharger le flux retour"),
    "kind": ("Kind", "Type"),
    "page": ("Page", "Page"),
}


class Words:
    """The words of one language, looked up as ``t("key")`` in the templates."""

    def __init__(self, lang: str) -> None:
        self.lang = lang if lang in LANGUAGES else "en"
        self._index = LANGUAGES.index(self.lang)

    def __call__(self, key: str) -> str:
        pair = _WORDS.get(key)
        return pair[self._index] if pair else key


def choose(cookie: str | None, accept_language: str | None) -> str:
    """The cookie's language, else the browser's first language we speak, else English."""
    if cookie in LANGUAGES:
        return cookie
    best, best_q = "en", -1.0
    for position, item in enumerate((accept_language or "").split(",")):
        tag, _, params = item.strip().partition(";")
        lang = tag.strip().lower()[:2]
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if lang in LANGUAGES and q - position * 1e-6 > best_q:
            best, best_q = lang, q - position * 1e-6
    return best
