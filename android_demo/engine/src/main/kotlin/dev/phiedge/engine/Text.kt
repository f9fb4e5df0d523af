package dev.phiedge.engine

/**
 * Tokens -> text while generating (runtime/text.py): an incremental UTF-8-safe detokenizer and a stop matcher.
 *
 *     tokens --IncrementalDecoder--> complete characters --StopMatcher--> text the user sees
 *               holds a token run      holds a tail that could start a stop string
 *               ending mid-character
 *
 * Lengths and slices count code points, as Python's str does, so an emoji is one character here too.
 */
typealias Decode = (IntArray) -> String

const val REPLACEMENT = "\uFFFD"

internal fun String.cpLength(): Int = codePointCount(0, length)

/** Python's s[from:] with [from] in code points. */
internal fun String.cpDrop(from: Int): String = substring(offsetByCodePoints(0, minOf(from, cpLength())))

/** Python's s[:n] with [n] in code points. */
internal fun String.cpTake(n: Int): String = substring(0, offsetByCodePoints(0, minOf(n, cpLength())))

class IncrementalDecoder(private val decode: Decode, context: IntArray = IntArray(0)) {
    private val ids = ArrayList<Int>(context.toList())  // context: prompt tokens, decoded for reference, never emitted
    private var prefix = if (ids.isEmpty()) 0 else maxOf(0, ids.size - 4)
    private var read = ids.size

    fun push(token: Int): String {
        ids.add(token)
        return advance(final = false)
    }

    /** Text still held back (an incomplete character at the very end decodes as U+FFFD, as a full decode would). */
    fun flush(): String = advance(final = true)

    private fun advance(final: Boolean): String {
        val before = decode(ids.subList(prefix, read).toIntArray())
        val text = decode(ids.subList(prefix, ids.size).toIntArray())
        val beforeLen = before.cpLength()
        if (text.cpLength() <= beforeLen || (text.endsWith(REPLACEMENT) && !final)) return ""
        prefix = read
        read = ids.size
        return text.cpDrop(beforeLen)
    }
}

class StopMatcher(stops: Iterable<String>) {
    private val stops = stops.filter { it.isNotEmpty() }
    private val longest = this.stops.maxOfOrNull { it.cpLength() } ?: 0
    private var held = ""
    var stopped = false
        private set

    /** The part of [text] (plus what was held) that is safe to show; sets [stopped] at a stop string. */
    fun push(text: String): String {
        if (stopped) return ""
        val buffer = held + text
        val hit = stops.map { buffer.indexOf(it) }.filter { it >= 0 }.minOrNull()
        if (hit != null) {
            stopped = true
            held = ""
            return buffer.substring(0, hit)
        }
        val keep = partial(buffer)
        val cut = buffer.cpLength() - keep
        held = buffer.cpDrop(cut)
        return buffer.cpTake(cut)
    }

    /** Text held back at the end: it did not turn into a stop string, so it is shown. */
    fun flush(): String {
        val h = held
        held = ""
        return if (stopped) "" else h
    }

    /** Length (code points) of the longest tail of [buffer] that is a proper prefix of a stop string. */
    private fun partial(buffer: String): Int {
        val len = buffer.cpLength()
        for (n in minOf(len, longest - 1) downTo 1) {
            val tail = buffer.cpDrop(len - n)
            if (stops.any { it.startsWith(tail) }) return n
        }
        return 0
    }
}

/** IncrementalDecoder then StopMatcher: push a token, get the text that may be shown now. */
class TextStream(decode: Decode, stops: Iterable<String> = emptyList(), context: IntArray = IntArray(0)) {
    private val decoder = IncrementalDecoder(decode, context)
    private val matcher = StopMatcher(stops)
    private val shown = StringBuilder()

    val text: String get() = shown.toString()
    val stopped: Boolean get() = matcher.stopped

    fun push(token: Int): String = emit(matcher.push(decoder.push(token)))

    fun flush(): String {
        val piece = matcher.push(decoder.flush())
        return emit(piece + matcher.flush())
    }

    private fun emit(piece: String): String {
        shown.append(piece)
        return piece
    }
}
