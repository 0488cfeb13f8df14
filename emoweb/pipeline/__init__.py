"""One clip's way to the models: decode (`media`), faces (`faces`, the `haar` baseline), capture
quality (`quality`), the shared backbone features (`features`, stored by `featstore`), model inputs
(`batching`) and every model's answer (`inference`). Nothing here trains or serves."""
