package dev.phiedge.engine

/**
 * A small JSON reader and writer, so the engine needs nothing beyond the Kotlin standard library (manifest.json,
 * tokenizer.json, benchmark output). Objects read as LinkedHashMap (key order kept), arrays as List, numbers as
 * Long when integral and Double otherwise.
 */
object Json {
    fun parse(text: String): Any? {
        val reader = Reader(text)
        reader.skipWs()
        val value = reader.value()
        reader.skipWs()
        if (reader.i != text.length) reader.fail("trailing characters")
        return value
    }

    fun write(value: Any?, indent: Int = 0): String = StringBuilder().also { write(value, it, indent, 0) }.toString()

    private fun write(value: Any?, out: StringBuilder, indent: Int, depth: Int) {
        when (value) {
            null -> out.append("null")
            is String -> quote(value, out)
            is Boolean -> out.append(value)
            is Double -> out.append(if (value.isFinite()) value.toString() else "null")
            is Float -> write(value.toDouble(), out, indent, depth)
            is Number -> out.append(value.toString())
            is Map<*, *> -> block('{', '}', value.entries.toList(), out, indent, depth) { e, o ->
                quote(e.key.toString(), o); o.append(if (indent > 0) ": " else ":"); write(e.value, o, indent, depth + 1)
            }
            is Iterable<*> -> block('[', ']', value.toList(), out, indent, depth) { v, o -> write(v, o, indent, depth + 1) }
            is IntArray -> write(value.toList(), out, indent, depth)
            else -> throw IllegalArgumentException("cannot write ${value::class} as JSON")
        }
    }

    private fun <T> block(open: Char, close: Char, items: List<T>, out: StringBuilder, indent: Int, depth: Int,
                          item: (T, StringBuilder) -> Unit) {
        out.append(open)
        items.forEachIndexed { n, v ->
            if (n > 0) out.append(',')
            if (indent > 0) out.append('\n').append(" ".repeat(indent * (depth + 1)))
            item(v, out)
        }
        if (indent > 0 && items.isNotEmpty()) out.append('\n').append(" ".repeat(indent * depth))
        out.append(close)
    }

    private fun quote(s: String, out: StringBuilder) {
        out.append('"')
        for (c in s) when {
            c == '"' -> out.append("\\\"")
            c == '\\' -> out.append("\\\\")
            c == '\n' -> out.append("\\n")
            c == '\r' -> out.append("\\r")
            c == '\t' -> out.append("\\t")
            c < ' ' -> out.append("\\u%04x".format(c.code))
            else -> out.append(c)
        }
        out.append('"')
    }

    private class Reader(val s: String) {
        var i = 0

        fun fail(what: String): Nothing = throw IllegalArgumentException("invalid JSON at character $i: $what")

        fun skipWs() {
            while (i < s.length && s[i].isWhitespace()) i++
        }

        fun value(): Any? {
            if (i >= s.length) fail("unexpected end")
            return when (val c = s[i]) {
                '{' -> obj()
                '[' -> arr()
                '"' -> str()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> if (c == '-' || c.isDigit()) num() else fail("unexpected '$c'")
            }
        }

        fun literal(word: String, v: Any?): Any? {
            if (!s.startsWith(word, i)) fail("expected $word")
            i += word.length
            return v
        }

        fun obj(): Map<String, Any?> {
            val m = LinkedHashMap<String, Any?>()
            i++
            skipWs()
            if (s.getOrNull(i) == '}') { i++; return m }
            while (true) {
                skipWs()
                if (s.getOrNull(i) != '"') fail("expected a key")
                val k = str()
                skipWs()
                if (s.getOrNull(i) != ':') fail("expected ':'")
                i++
                skipWs()
                m[k] = value()
                skipWs()
                when (s.getOrNull(i)) {
                    ',' -> i++
                    '}' -> { i++; return m }
                    else -> fail("expected ',' or '}'")
                }
            }
        }

        fun arr(): List<Any?> {
            val l = ArrayList<Any?>()
            i++
            skipWs()
            if (s.getOrNull(i) == ']') { i++; return l }
            while (true) {
                skipWs()
                l.add(value())
                skipWs()
                when (s.getOrNull(i)) {
                    ',' -> i++
                    ']' -> { i++; return l }
                    else -> fail("expected ',' or ']'")
                }
            }
        }

        fun str(): String {
            val b = StringBuilder()
            i++
            while (true) {
                if (i >= s.length) fail("unterminated string")
                val c = s[i++]
                when (c) {
                    '"' -> return b.toString()
                    '\\' -> {
                        when (val e = s.getOrNull(i++)) {
                            '"', '\\', '/' -> b.append(e)
                            'b' -> b.append('\b')
                            'f' -> b.append('\u000c')
                            'n' -> b.append('\n')
                            'r' -> b.append('\r')
                            't' -> b.append('\t')
                            'u' -> {
                                if (i + 4 > s.length) fail("short \\u escape")
                                b.append(s.substring(i, i + 4).toInt(16).toChar())  // surrogates pair up in the String
                                i += 4
                            }
                            else -> fail("bad escape \\$e")
                        }
                    }
                    else -> b.append(c)
                }
            }
        }

        fun num(): Number {
            val start = i
            if (s[i] == '-') i++
            while (i < s.length && (s[i].isDigit() || s[i] in ".eE+-")) i++
            val t = s.substring(start, i)
            return if (t.any { it in ".eE" }) t.toDouble() else t.toLongOrNull() ?: t.toDouble()
        }
    }
}

/** Typed access to parsed JSON, failing with the field's name. */
@Suppress("UNCHECKED_CAST")
internal fun Map<String, Any?>.obj(key: String): Map<String, Any?> =
    this[key] as? Map<String, Any?> ?: throw IllegalArgumentException("field '$key' is missing or not an object")

@Suppress("UNCHECKED_CAST")
internal fun Map<String, Any?>.list(key: String): List<Any?> =
    this[key] as? List<Any?> ?: throw IllegalArgumentException("field '$key' is missing or not a list")

internal fun Map<String, Any?>.str(key: String): String =
    this[key] as? String ?: throw IllegalArgumentException("field '$key' is missing or not a string")

internal fun Map<String, Any?>.int(key: String): Int =
    (this[key] as? Number)?.toInt() ?: throw IllegalArgumentException("field '$key' is missing or not a number")

internal fun Map<String, Any?>.intOrNull(key: String): Int? = (this[key] as? Number)?.toInt()
