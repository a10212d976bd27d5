// Human-readable text for the WebSocket error codes (PROTOCOL.md, "Error").

const TITLES = {
  bad_frame: 'The server could not read that message.',
  too_long: 'That message is too long. Shorten it and send it again.',
  busy: 'Too many messages are waiting. Let the current answer finish first.',
  rate_limited: 'You are sending messages too fast. Wait a moment, then try again.',
  upstream_error: 'The AI service had a problem answering. Press Retry to try again.',
  upstream_timeout: 'The AI service did not answer in time. Press Retry to try again.',
  content_filter: 'The answer was stopped by the content filter.',
  context_overflow: 'This conversation is too long for the model. Clear it or start a new room.',
  unknown_command: 'Unknown command. Type /help to see the commands.',
  bad_argument: 'That command argument is not valid.',
  translation_unavailable: 'Translation is not available right now.',
};

/** {title, message, detail} for an error frame; never raw JSON. */
export function describeError(frame) {
  const error = frame.error && typeof frame.error === 'object' ? frame.error : {};
  const code = typeof error.code === 'string' ? error.code : 'error';
  const serverText = typeof frame.msg === 'string' ? frame.msg.trim() : '';
  const title = TITLES[code] || serverText || 'Something went wrong.';
  const message = serverText && serverText !== title ? serverText : '';
  const detail = typeof error.detail === 'string' ? error.detail : '';
  return { code, title, message, detail: detail !== message ? detail : '' };
}
