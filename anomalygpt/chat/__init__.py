"""The chat's trust layer: recognise what a question asks (intents), put the trained form of
it to the LLM (grounded), check every claim of the answer against the report (claims) and
replace a contradicting answer by the report's own wording (answer). Library layer: uses
data_sim's wording and the report; the inspector calls it for every answer."""
