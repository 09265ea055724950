"""The Chorus Pro API through PISTE: OAuth2, deposits, integration reports."""
