package dev.phiedge.engine

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File

/**
 * Writes every regex the engine compiles, with its matches under the JVM on the golden inputs, for
 * android_demo/icu_check.py to replay under ICU4C (Android's regex engine). The patterns are taken from the
 * engine (Regexes.FIXED and each golden tokenizer's splitPattern), never retyped.
 */
class IcuCasesTest {
    private val tokenizers = listOf("demo", "codegen", "llama", "gpt4o")

    private fun tokenizer(kind: String): Tokenizer =
        if (kind == "demo") Tokenizer.load(File(Golden.demo, "tokenizer.json"))
        else Tokenizer.fromJson(Golden.gunzipText("tokenizer_$kind.json.gz"))

    @Suppress("UNCHECKED_CAST")
    private fun inputs(): List<String> {
        val texts = LinkedHashSet<String>()
        for (kind in tokenizers) {
            for (case in Golden.json("tokenizer_$kind.json")["encode"] as List<Map<String, Any?>>) texts.add(case["text"] as String)
        }
        val demo = Manifest.load(Golden.demo)
        for ((name, t) in demo.templates) texts.addAll(listOfNotNull(name, t.prompt, t.turn, t.system))
        texts.addAll(listOf("VmHWM:\t  123456 kB", "<0x0A><0xE2><0x96><0x81>x<0x>", "{prompt} {system} {other}"))
        return texts.toList()
    }

    @Test
    fun everyRegexIsListed() {
        // A regex compiled anywhere else in the engine would escape the ICU check: count the constructors.
        val sources = File(Golden.repo, "android_demo/engine/src/main/kotlin").walk().filter { it.extension == "kt" }
        val made = sources.sumOf { f -> Regex("""\bRegex\(|Pattern\.compile\(|\.toRegex\(""").findAll(f.readText()).count() }
        // Regexes.FIXED's three Regex(...) and regexFor's Pattern.compile (which builds PRETOKENIZE and Split patterns)
        assertEquals("a regex was added to the engine: list it in Regexes.FIXED so icu_check.py runs it under ICU",
            4, made)
    }

    @Test
    fun writeIcuCases() {
        val patterns = LinkedHashMap(Regexes.FIXED)
        for (kind in tokenizers) tokenizer(kind).splitPattern?.let { patterns.putIfAbsent("tokenizer_$kind.split", it) }
        assertTrue("the Phi-4-mini tokenizer's Split regex is missing", "tokenizer_gpt4o.split" in patterns)
        val texts = inputs()
        val cases = patterns.map { (name, pattern) ->
            val compiled = java.util.regex.Pattern.compile(pattern)
            linkedMapOf("name" to name, "pattern" to pattern, "matches" to texts.map { text ->
                val m = compiled.matcher(text)
                val spans = ArrayList<List<Int>>()
                while (m.find()) spans.add(listOf(m.start(), m.end()))  // UTF-16 indices, as ICU reports them
                spans
            })
        }
        val out = System.getProperty("phiedge.icuCases") ?: return
        File(out).writeText(Json.write(mapOf("inputs" to texts, "patterns" to cases)))
        println("icu cases: ${cases.size} patterns x ${texts.size} inputs written to $out")
    }
}
