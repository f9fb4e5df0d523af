package dev.phiedge.engine

import java.io.File

/**
 * Byte-level BPE as GPT-2 and CodeGen (phi-1, phi-1.5, phi-2) use it, read from a Hugging Face tokenizer.json:
 *
 *     text --added tokens split out (leftmost longest)--> pieces
 *          --pre-tokenizer regex--> words --UTF-8 bytes, each byte as one printable char--> BPE by merge rank --> ids
 *
 * decode() mirrors tokenizers' default decode(ids): special tokens skipped, each token mapped back to its bytes
 * (an added token whose characters are not all byte-chars, like CodeGen's runs of spaces, as its own UTF-8),
 * the bytes read as UTF-8 with U+FFFD for each invalid or incomplete sequence (Rust's from_utf8_lossy).
 */
class Tokenizer(
    private val vocab: Map<String, Int>,
    merges: List<Pair<String, String>>,
    val addedTokens: List<AddedToken>,
    private val addPrefixSpace: Boolean = false,
) {
    data class AddedToken(val id: Int, val content: String, val special: Boolean, val normalized: Boolean)

    private val ranks = HashMap<String, Int>(merges.size * 2).apply {
        merges.forEachIndexed { rank, (a, b) -> putIfAbsent(a + '\u0000' + b, rank) }
    }
    private val idToToken: Array<String?>
    private val specialIds = addedTokens.filter { it.special }.map { it.id }.toHashSet()
    private val cache = HashMap<String, IntArray>()

    init {
        val size = maxOf(vocab.values.maxOrNull() ?: -1, addedTokens.maxOfOrNull { it.id } ?: -1) + 1
        idToToken = arrayOfNulls(size)
        for ((t, id) in vocab) idToToken[id] = t
        for (t in addedTokens) idToToken[t.id] = t.content
    }

    val vocabSize: Int get() = idToToken.size

    fun encode(text: String): IntArray {
        val out = ArrayList<Int>()
        // tokenizers splits on tokens matched on the raw text (normalized=false) first, then on the others.
        val raw = addedTokens.filter { !it.normalized }
        val normalized = addedTokens.filter { it.normalized }
        for ((piece, token) in splitAdded(text, raw)) {
            if (token != null) { out.add(token.id); continue }
            for ((inner, t2) in splitAdded(piece, normalized)) {
                if (t2 != null) out.add(t2.id) else encodeOrdinary(inner, out)
            }
        }
        return out.toIntArray()
    }

    fun decode(ids: IntArray, skipSpecial: Boolean = true): String {
        val bytes = java.io.ByteArrayOutputStream()
        for (id in ids) {
            if (skipSpecial && id in specialIds) continue
            val token = idToToken.getOrNull(id) ?: throw IllegalArgumentException(
                "token id $id is outside the vocabulary of $vocabSize; the ids come from another tokenizer")
            val mapped = ByteArray(token.length)
            var ok = true
            for ((k, c) in token.withIndex()) {
                val b = CHAR_TO_BYTE[c]
                if (b == null) { ok = false; break }
                mapped[k] = b.toByte()
            }
            bytes.write(if (ok) mapped else token.toByteArray(Charsets.UTF_8))
        }
        return Utf8.decodeLossy(bytes.toByteArray())
    }

    fun decode(ids: List<Int>): String = decode(ids.toIntArray())

    /** (piece, null) for ordinary text and ("", token) for an added token; leftmost match first, longest wins. */
    private fun splitAdded(text: String, tokens: List<AddedToken>): List<Pair<String, AddedToken?>> {
        if (tokens.isEmpty() || text.isEmpty()) return listOf(text to null)
        val out = ArrayList<Pair<String, AddedToken?>>()
        var start = 0
        var i = 0
        while (i < text.length) {
            var best: AddedToken? = null
            for (t in tokens) if (text.startsWith(t.content, i) && (best == null || t.content.length > best.content.length)) best = t
            if (best == null) { i++; continue }
            if (i > start) out.add(text.substring(start, i) to null)
            out.add("" to best)
            i += best.content.length
            start = i
        }
        if (start < text.length) out.add(text.substring(start) to null)
        return out
    }

    private fun encodeOrdinary(text: String, out: MutableList<Int>) {
        if (text.isEmpty()) return
        val input = if (addPrefixSpace && !text[0].isWhitespace()) " $text" else text
        val m = PRETOKENIZE.matcher(input)
        while (m.find()) {
            val word = m.group()
            val ids = cache.getOrPut(word) { bpe(word) }
            for (id in ids) out.add(id)
        }
    }

    private fun bpe(word: String): IntArray {
        val bytes = word.toByteArray(Charsets.UTF_8)
        var symbols = MutableList(bytes.size) { BYTE_TO_CHAR[bytes[it].toInt() and 0xff].toString() }
        while (symbols.size > 1) {
            var bestRank = Int.MAX_VALUE
            var bestAt = -1
            for (k in 0 until symbols.size - 1) {
                val r = ranks[symbols[k] + '\u0000' + symbols[k + 1]] ?: continue
                if (r < bestRank) { bestRank = r; bestAt = k }
            }
            if (bestAt < 0) break
            val a = symbols[bestAt]
            val b = symbols[bestAt + 1]
            val merged = ArrayList<String>(symbols.size)
            var k = 0
            while (k < symbols.size) {  // merge every occurrence of the pair, left to right
                if (k < symbols.size - 1 && symbols[k] == a && symbols[k + 1] == b) { merged.add(a + b); k += 2 }
                else { merged.add(symbols[k]); k++ }
            }
            symbols = merged
        }
        return IntArray(symbols.size) {
            vocab[symbols[it]] ?: throw IllegalStateException("BPE produced '${symbols[it]}', which is not in the vocabulary")
        }
    }

    companion object {
        /** GPT-2's pre-tokenizer pattern; (?U) makes \s and \p{..} Unicode-aware, as in the Rust (onig) original. */
        val PRETOKENIZE: java.util.regex.Pattern = java.util.regex.Pattern.compile(
            "(?U)'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+")

        /** GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest map to 256 + n. */
        val BYTE_TO_CHAR: CharArray = CharArray(256).also { table ->
            var n = 0
            for (b in 0 until 256) {
                val printable = b in 33..126 || b in 161..172 || b in 174..255
                table[b] = if (printable) b.toChar() else (256 + n++).toChar()
            }
        }
        val CHAR_TO_BYTE: Map<Char, Int> = BYTE_TO_CHAR.withIndex().associate { (b, c) -> c to b }

        fun load(file: File): Tokenizer = try {
            fromJson(file.readText(Charsets.UTF_8))
        } catch (e: IllegalArgumentException) {
            throw IllegalArgumentException("tokenizer $file cannot be read (${e.message}); copy the package again", e)
        }

        @Suppress("UNCHECKED_CAST")
        fun fromJson(text: String): Tokenizer {
            val root = Json.parse(text) as? Map<String, Any?> ?: throw IllegalArgumentException("not a JSON object")
            val model = root.obj("model")
            require(model["type"] == "BPE") { "model type ${model["type"]} is not BPE; only byte-level BPE is supported" }
            require(root["normalizer"] == null) { "tokenizers with a normalizer are not supported" }
            val pre = root["pre_tokenizer"] as? Map<String, Any?>
            require(pre?.get("type") == "ByteLevel") { "pre-tokenizer ${pre?.get("type")} is not ByteLevel" }
            require(pre["use_regex"] != false) { "ByteLevel without its regex is not supported" }
            val vocab = model.obj("vocab").mapValues { (it.value as Number).toInt() }
            val merges = model.list("merges").map { m ->
                when (m) {
                    is String -> m.split(' ', limit = 2).let { it[0] to it[1] }  // older "a b" form
                    is List<*> -> m[0] as String to m[1] as String
                    else -> throw IllegalArgumentException("merge $m is neither \"a b\" nor [a, b]")
                }
            }
            val added = (root["added_tokens"] as? List<Map<String, Any?>> ?: emptyList()).map {
                require(it["lstrip"] != true && it["rstrip"] != true && it["single_word"] != true) {
                    "added token ${it["content"]} uses lstrip/rstrip/single_word, which this tokenizer does not support"
                }
                AddedToken(it.int("id"), it.str("content"), it["special"] == true, it["normalized"] == true)
            }
            return Tokenizer(vocab, merges, added, pre["add_prefix_space"] == true)
        }
    }
}

/** UTF-8 decoding that replaces each maximal invalid subpart with one U+FFFD, exactly like Rust's from_utf8_lossy. */
object Utf8 {
    fun decodeLossy(b: ByteArray): String {
        val out = StringBuilder(b.size)
        var i = 0
        while (i < b.size) {
            val c0 = b[i].toInt() and 0xff
            if (c0 < 0x80) { out.append(c0.toChar()); i++; continue }
            val (len, lo, hi) = when (c0) {
                in 0xC2..0xDF -> Triple(2, 0x80, 0xBF)
                0xE0 -> Triple(3, 0xA0, 0xBF)
                in 0xE1..0xEC, 0xEE, 0xEF -> Triple(3, 0x80, 0xBF)
                0xED -> Triple(3, 0x80, 0x9F)
                0xF0 -> Triple(4, 0x90, 0xBF)
                in 0xF1..0xF3 -> Triple(4, 0x80, 0xBF)
                0xF4 -> Triple(4, 0x80, 0x8F)
                else -> Triple(0, 0, 0)
            }
            if (len == 0) { out.append('\uFFFD'); i++; continue }
            var cp = c0 and (0xFF shr (len + 1))
            var k = 1
            while (k < len) {
                if (i + k >= b.size) break
                val c = b[i + k].toInt() and 0xff
                val okRange = if (k == 1) c in lo..hi else c in 0x80..0xBF
                if (!okRange) break
                cp = (cp shl 6) or (c and 0x3F)
                k++
            }
            if (k < len) { out.append('\uFFFD'); i += k; continue }
            out.appendCodePoint(cp)
            i += len
        }
        return out.toString()
    }
}
