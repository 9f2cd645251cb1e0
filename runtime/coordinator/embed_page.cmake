# cmake -DIN=page.html -DOUT=page.h -P embed_page.cmake: the dashboard page as a C++ string.
file(READ ${IN} text)
string(FIND "${text}" ")SYPAGE\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${IN} contains the raw-string delimiter )SYPAGE\"")
endif()
file(WRITE ${OUT}.tmp "// Generated from ${IN} by embed_page.cmake.\n#pragma once\nnamespace sy {\ninline constexpr const char* kDashboardPage = R\"SYPAGE(${text})SYPAGE\";\n}\n")
file(RENAME ${OUT}.tmp ${OUT})
