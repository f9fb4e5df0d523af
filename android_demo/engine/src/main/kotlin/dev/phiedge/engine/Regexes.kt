package dev.phiedge.engine

/**
 * Every regex the engine compiles, so the host tests can run each one through ICU, Android's regex engine
 * (java.util.regex on a phone is ICU4C underneath; HotSpot's is not, and accepts constructs ICU rejects, such as
 * the inline flag (?U)). The fixed patterns are listed here; a tokenizer's split pattern comes from its
 * tokenizer.json (Tokenizer.splitPattern). test-host.sh writes each pattern's matches on the golden inputs under
 * the JVM and android_demo/icu_check.py requires ICU to compile it and find the same matches.
 */
object Regexes {
    /** Spaces and tabs between the fields of a /proc/self/status line ("VmHWM:\t  1234 kB"). */
    val BLANKS = Regex("[ \\t]+")

    /** name -> pattern, as compiled. */
    val FIXED: Map<String, String> = linkedMapOf(
        "Manifest.PLACEHOLDER" to Manifest.PLACEHOLDER.pattern,
        "Tokenizer.BYTE_PIECE" to Tokenizer.BYTE_PIECE.pattern,
        "Tokenizer.PRETOKENIZE" to Tokenizer.PRETOKENIZE.pattern(),
        "Regexes.BLANKS" to BLANKS.pattern,
    )
}
